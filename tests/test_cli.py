"""The `streamimg` command as a user runs it: subprocesses against the test broker."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from streamimg.admin import committed_offsets, read_topic
from streamimg.broker import free_port, wait_for_port
from tests.helpers import ROOT, stop_process, wait_until


def streamimg(*args, timeout=120, **kwargs):
    return subprocess.run([sys.executable, "-m", "streamimg.cli", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT, stdin=subprocess.DEVNULL,
                          **kwargs)


def test_produce_a_folder_and_consume_it_back_to_files(kafka, uid, tmp_path):
    rng = np.random.default_rng(3)
    images = [rng.integers(0, 256, size=(20 + i, 30, 3), dtype=np.uint8) for i in range(3)]
    folder = tmp_path / "images"
    folder.mkdir()
    for i, img in enumerate(images):
        Image.fromarray(img).save(folder / f"img_{i}.png")
    (folder / "notes.txt").write_text("not an image")
    topic = f"cli-{uid}"
    done = streamimg("produce", str(folder), "--topic", topic, "--bootstrap", kafka.bootstrap,
                     "--stream", "cam", "--encoding", "png")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1])["frames"] == 3

    out = tmp_path / "saved"
    done = streamimg("consume", topic, "--bootstrap", kafka.bootstrap, "--save-dir", str(out))
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [(x["key"], x["headers"]["streamimg.frame"]) for x in lines] == [
        ("cam", "0"), ("cam", "1"), ("cam", "2")]
    for i, img in enumerate(images):
        saved = np.asarray(Image.open(out / f"cam_{i:06d}.png"))
        np.testing.assert_array_equal(saved, img)


def test_produce_video_with_frame_step_and_limit(kafka, uid):
    from tests.helpers import clip

    topic = f"cli-{uid}"
    done = streamimg("produce", str(clip("bikes.mp4")), "--topic", topic, "--bootstrap",
                     kafka.bootstrap, "--frame-step", "5", "--limit", "4")
    assert done.returncode == 0, done.stderr
    frames = read_topic(kafka, topic)
    assert [dict(m.headers())["streamimg.frame"] for m in frames] == [b"0", b"1", b"2", b"3"]
    assert {dict(m.headers())["streamimg.height"] for m in frames} == {b"272"}


def test_run_refuses_a_bad_topology_before_any_offset_moves(kafka, uid, tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text(f"from streamimg import Topology\ntopology = Topology('bad-{uid}', "
                   f"inputs='in-{uid}')\ntopology.source.gaussian_blur(sigma=0)"
                   ".to_kafka_analytics()\n")
    done = streamimg("run", str(bad), "--bootstrap", kafka.bootstrap)
    assert done.returncode == 2
    assert "sigma must be > 0 pixels, got 0" in done.stderr
    assert committed_offsets(kafka, f"bad-{uid}", [f"in-{uid}"]) == {}
    done = streamimg("run", str(tmp_path / "missing.py"), "--bootstrap", kafka.bootstrap)
    assert done.returncode == 2 and "no such topology file" in done.stderr
    done = streamimg("run", str(bad), "--bootstrap", kafka.bootstrap, "--kafka", "oops")
    assert done.returncode == 2


def test_broker_command_serves_and_stops_on_sigterm():
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "streamimg.cli", "broker", "--port",
                             str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, cwd=ROOT, env=os.environ.copy())
    try:
        wait_for_port("127.0.0.1", port, 30)
    finally:
        code = stop_process(proc, signal.SIGTERM, timeout_s=30)
    assert code == 0
    assert f"127.0.0.1:{port}" in proc.stdout.read().decode()


@pytest.mark.timeout(300)
def test_demo_streams_two_clips_and_shows_the_faces(tmp_path):
    """`streamimg demo --serve`: the summary, then the analysis service over the demo's
    results until SIGTERM, which stops everything (exit 0, no process left behind)."""
    import httpx
    import psutil

    out, port = tmp_path / "demo", free_port()
    log = tmp_path / "demo.log"
    with open(log, "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "streamimg.cli", "demo", "--limit", "4",
                                 "--output", str(out), "--serve", "--port", str(port)],
                                cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=err)
    url = f"http://127.0.0.1:{port}"

    def served():
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            rows = httpx.get(f"{url}/analyses", timeout=2).json()
        except httpx.HTTPError:
            return False
        return len(rows) == 2 and all(a["frames_done"] == 4 for a in rows)

    try:
        wait_until(served, 240, "the demo's results in the analysis service")
        assert {a["state"] for a in httpx.get(f"{url}/analyses").json()} == {"done"}
        jpeg = httpx.get(f"{url}/analyses/carphone_pristine/frames/0")
        assert jpeg.headers["content-type"] == "image/jpeg"
        children = psutil.Process(proc.pid).children(recursive=True)
        assert stop_process(proc, signal.SIGTERM, timeout_s=120) == 0, log.read_text()[-3000:]
    finally:
        stop_process(proc, signal.SIGKILL)
    gone, alive = psutil.wait_procs(children, timeout=30)
    assert not alive, f"processes left behind: {alive}"
    stderr = log.read_text()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["frames_in"] == summary["frames_out"] == 8  # 4 frames of each clip
    assert summary["exactly_once"] is True and summary["daemon_exit_code"] is None  # serving
    assert summary["frames_per_s"] > 0 and summary["elapsed_s"] > 0
    assert set(summary["topics"]["outputs"]) == {"video_analysis.frames",
                                                 "video_analysis.analytics"}
    assert {"faces", "palette", "encode"} <= set(summary["stage_ms_per_frame"])
    assert summary["streams"]["carphone_pristine"]["faces"] > 0
    assert summary["faces_detected"] > 0
    assert f"{summary['faces_detected']} faces detected" in " ".join(stderr.split())
    # Output frames keep the encoding they were produced in (the topology's JPEG).
    assert not list(out.glob("*.png"))
    bunny, phone = sorted(out.glob("bigbuckbunny_*.jpg")), sorted(out.glob("carphone_*.jpg"))
    assert len(bunny) == len(phone) == 4
    with Image.open(bunny[0]) as im:  # the frame plus its palette strip (height // 8)
        assert (im.format, im.size) == ("JPEG", (1280, 720 + 90))
    with Image.open(phone[0]) as im:
        assert (im.format, im.size) == ("JPEG", (176, 144 + 18))
    assert len((out / "analytics.jsonl").read_text().splitlines()) == 8
    assert "Dask dashboard" in stderr and "Host wildcard" not in stderr
    assert "analysis service" in stderr


@pytest.mark.timeout(180)
def test_sigterm_while_starting_leaves_no_worker_process_behind(kafka, uid, tmp_path):
    import psutil

    from tests.helpers import write_topology
    path = write_topology(tmp_path / "t.py", f"start-{uid}", f"in-{uid}",
                          ".to_kafka_analytics()")
    proc = subprocess.Popen([sys.executable, "-m", "streamimg.cli", "run", str(path),
                             "--bootstrap", kafka.bootstrap, "--processes", "--create-topics"],
                            cwd=ROOT,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        children = []
        while not children:  # the worker processes are being started
            assert time.monotonic() < deadline, "no worker process started"
            children = psutil.Process(proc.pid).children(recursive=True)
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=90)
    finally:
        stop_process(proc, signal.SIGKILL)
    assert code == 0, proc.stdout.read().decode()[-3000:]
    gone, alive = psutil.wait_procs(children, timeout=30)
    assert not alive, f"worker processes left behind: {alive}"


def test_ctrl_c_on_run_with_worker_processes_drains_and_exits_0(kafka, uid, tmp_path, bikes):
    # A terminal's Ctrl-C sends SIGINT to the whole process group: the daemon and its Dask
    # worker processes. The workers must not die of it before the daemon has drained.
    import psutil

    from streamimg.admin import ensure_topics
    from streamimg.sources.video import SourceFrame, produce_frames
    from tests.harness.checker import check_exactly_once
    from tests.helpers import wait_until, write_topology

    topic, name = f"in-{uid}", f"ctrlc-{uid}"
    ensure_topics(kafka, [topic])
    path = write_topology(tmp_path / "t.py", name, topic,
                          ".gaussian_blur(1.0).to_kafka_frames('raw')", max_frames=2)
    stats = tmp_path / "stats.json"
    proc = subprocess.Popen([sys.executable, "-m", "streamimg.cli", "run", str(path),
                             "--bootstrap", kafka.bootstrap, "--processes",
                             "--stats-file", str(stats)],
                            cwd=ROOT, start_new_session=True, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        ends = produce_frames(kafka, topic, (SourceFrame(i, i, f) for i, f in
                                             enumerate(bikes[:6])), stream="s")
        wait_until(lambda: stats.exists() and json.loads(stats.read_text())["frames_out"] >= 2,
                   120, "a first commit")
        children = psutil.Process(proc.pid).children(recursive=True)
        assert children, "no worker processes"
        os.killpg(proc.pid, signal.SIGINT)  # what the terminal does
        code = proc.wait(timeout=120)
    finally:
        stop_process(proc, signal.SIGKILL)
    out = proc.stdout.read().decode()
    assert code == 0, out[-3000:]
    assert "Traceback" not in out and "KeyboardInterrupt" not in out, out[-3000:]
    _, alive = psutil.wait_procs(children, timeout=30)
    assert not alive, f"worker processes left behind: {alive}"
    # Whatever was committed is exact; a restart would read the rest.
    committed = committed_offsets(kafka, name, [topic]).get((topic, 0), 0)
    report = check_exactly_once(kafka.bootstrap, inputs={(topic, 0): committed},
                                outputs=[f"{name}.frames"], dlq=f"{name}.dlq", group=name)
    assert report.ok and committed >= 2 and ends[0] == 6, report.summary()
