"""Every CLI mistake ends in one clear line and a documented exit code (issue 9).

Real subprocesses of `streamimg` against the session broker, or against a free loopback
port where nothing listens; each case also checks that nothing was lost or created.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from confluent_kafka import Consumer, TopicPartition
from PIL import Image

from streamimg.admin import committed_offsets, ensure_topics, partitions_of, read_topic
from streamimg.broker import free_port
from tests.helpers import ROOT, clip, stop_process, wait_until, write_topology


def streamimg(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "streamimg.cli", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT, stdin=subprocess.DEVNULL)


def error_line(done, command: str) -> str:
    """The one line the command printed for its error; no traceback, no librdkafka output."""
    assert "Traceback" not in done.stderr and "%3|" not in done.stderr, done.stderr
    lines = [x for x in done.stderr.splitlines() if x.startswith(f"streamimg {command}:")]
    assert len(lines) == 1, done.stderr
    return lines[0]


def test_help_is_light_shows_defaults_and_documents_the_exit_codes():
    probe = ("import sys\nfrom streamimg.cli import build_parser\nbuild_parser()\n"
             "print([m for m in ('numpy', 'dask', 'distributed', 'cv2', 'confluent_kafka', "
             "'streamz') if m in sys.modules])")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          timeout=60, cwd=ROOT)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr
    top = streamimg("--help", timeout=60)
    assert top.returncode == 0
    for code, what in ((0, "success"), (1, "other failure"), (2, "usage, configuration"),
                       (3, "fenced"), (4, "broker unreachable"), (130, "interrupted")):
        assert any(line.split()[:1] == [str(code)] and what in line
                   for line in top.stdout.splitlines()), (code, top.stdout)
    run = streamimg("run", "--help", timeout=60)
    assert run.returncode == 0
    text = " ".join(run.stdout.split())
    assert "(default: 5.0)" in text and "(default: 127.0.0.1:9092)" in text
    assert "--create-topics" in text and "--debug" in text
    readme = (ROOT / "README.md").read_text()
    for code in (0, 1, 2, 3, 4, 130):
        assert f"\n| {code} |" in readme


def test_broker_unreachable_exits_4_before_anything_starts(tmp_path):
    down = f"127.0.0.1:{free_port()}"  # nothing listens there
    image = tmp_path / "grey.png"
    Image.fromarray(np.zeros((4, 5), np.uint8)).save(image)
    topo = write_topology(tmp_path / "t.py", "unreachable", "in-unreachable",
                          ".to_kafka_analytics()")
    for command, args in (("produce", [str(clip("bikes.mp4")), "--topic", "t"]),
                          ("produce-pixels", [str(image), "--topic", "t"]),
                          ("run", [str(topo)]),
                          ("consume", ["t"])):
        done = streamimg(command, *args, "--bootstrap", down, "--connect-timeout", "2")
        assert done.returncode == 4, (command, done.stderr)
        line = error_line(done, command)
        assert f"no Kafka broker answered at {down} within 2 s" in line
        assert "streamimg broker" in line and "--bootstrap" in line
        assert "Dask dashboard" not in done.stderr  # run: no cluster was started
    # A missing input is reported first, even with the broker down.
    done = streamimg("produce", str(tmp_path / "nope.mp4"), "--topic", "t", "--bootstrap", down)
    assert done.returncode == 2
    assert "no such file or folder" in error_line(done, "produce")


def test_verbose_and_debug_add_the_traceback():
    down = f"127.0.0.1:{free_port()}"
    for flags in (["-v", "consume"], ["consume", "--debug"]):
        done = streamimg(*flags, "t", "--bootstrap", down, "--connect-timeout", "1")
        assert done.returncode == 4
        assert "Traceback" in done.stderr and "BrokerUnreachable" in done.stderr
        assert done.stderr.rstrip().splitlines()[-1].startswith("streamimg consume: no Kafka")


@pytest.mark.timeout(300)
def test_run_refuses_an_input_topic_that_does_not_exist(kafka, uid, tmp_path):
    ensure_topics(kafka, [f"frames-{uid}"])
    typo = f"frams-{uid}"
    topo = write_topology(tmp_path / "t.py", f"typo-{uid}", typo, ".to_kafka_analytics()")
    done = streamimg("run", str(topo), "--bootstrap", kafka.bootstrap)
    assert done.returncode == 2
    line = error_line(done, "run")
    assert f"input topic {typo!r} does not exist" in line
    assert f"did you mean 'frames-{uid}'" in line and "--create-topics" in line
    assert "Dask dashboard" not in done.stderr
    # Nothing was created, nothing committed.
    for topic in (typo, f"typo-{uid}.analytics", f"typo-{uid}.dlq"):
        assert partitions_of(kafka, topic) == []
    committed = committed_offsets(kafka, f"typo-{uid}", [f"frames-{uid}"])
    assert all(offset < 0 for offset in committed.values())  # -1001: none committed

    # With --create-topics the daemon creates its input and starts consuming it.
    log = tmp_path / "run.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "streamimg.cli", "run", str(topo),
                                 "--bootstrap", kafka.bootstrap, "--workers", "1",
                                 "--create-topics"], stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, cwd=ROOT)
    try:
        wait_until(lambda: f"consuming ['{typo}']" in log.read_text(), 180,
                   "the daemon consuming its created input")
        assert partitions_of(kafka, typo) == [0]
    finally:
        code = stop_process(proc, signal.SIGTERM, timeout_s=90)
    assert code == 0, log.read_text()[-3000:]


def test_consume_a_topic_that_does_not_exist(kafka, uid):
    done = streamimg("consume", f"no_such_topic_{uid}", "--bootstrap", kafka.bootstrap)
    assert done.returncode == 2 and done.stdout == ""
    assert f"topic 'no_such_topic_{uid}' does not exist" in error_line(done, "consume")
    assert partitions_of(kafka, f"no_such_topic_{uid}") == []  # and it was not created


def test_produce_refuses_missing_and_non_video_inputs_before_creating_the_topic(
        kafka, uid, tmp_path):
    topic = f"bad-input-{uid}"
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n" * 20)
    done = streamimg("produce", str(text), "--topic", topic, "--bootstrap", kafka.bootstrap)
    assert done.returncode == 2
    line = error_line(done, "produce")
    assert f"{text} is not a video FFmpeg can read" in line
    done = streamimg("produce", str(tmp_path / "missing.mp4"), "--topic", topic,
                     "--bootstrap", kafka.bootstrap)
    assert done.returncode == 2
    assert f"no such file or folder: {tmp_path / 'missing.mp4'}" in error_line(done, "produce")
    assert partitions_of(kafka, topic) == []


def test_produce_drops_a_corrupt_image_and_delivers_the_good_ones(kafka, uid, tmp_path):
    """With --drop-failures a corrupt file is skipped, said on stderr and in the summary
    (without it, it becomes a failed frame record: tests/test_produce_sources.py)."""
    rng = np.random.default_rng(9)
    folder = tmp_path / "images"
    folder.mkdir()
    images = {}
    for i in range(4):
        if i == 2:
            (folder / "img_2.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 50)
            continue
        images[i] = rng.integers(0, 256, size=(16, 24, 3), dtype=np.uint8)
        Image.fromarray(images[i]).save(folder / f"img_{i}.png")
    topic = f"corrupt-{uid}"
    done = streamimg("produce", str(folder), "--topic", topic, "--bootstrap", kafka.bootstrap,
                     "--stream", "cam", "--encoding", "png", "--drop-failures")
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    warnings = [x for x in done.stderr.splitlines() if x.startswith("streamimg produce:")]
    assert len(warnings) == 1 and f"skipping {folder / 'img_2.png'}" in warnings[0]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["frames"] == 3 and summary["skipped"] == ["img_2.png"]
    assert summary["interrupted"] is False
    records = read_topic(kafka, topic)
    got = {int(dict(m.headers())["streamimg.frame"]): m for m in records}
    assert sorted(got) == [0, 1, 3]  # the frame index is the file's position: a gap at 2

    done = streamimg("consume", topic, "--bootstrap", kafka.bootstrap, "--save-dir",
                     str(tmp_path / "saved"))
    assert done.returncode == 0, done.stderr
    lines = [json.loads(x) for x in done.stdout.splitlines()]
    assert [x["frame"]["frame"] for x in lines] == [0, 1, 3]
    assert lines[0]["frame"] | {"timestamp_ms": 0} == {
        "stream": "cam", "frame": 0, "timestamp_ms": 0, "shape": [16, 24, 3], "dtype": "uint8",
        "encoding": "png", "order": "RGB"}
    for i, img in images.items():
        saved = np.asarray(Image.open(tmp_path / "saved" / f"cam_{i:06d}.png"))
        np.testing.assert_array_equal(saved, img)


@pytest.mark.timeout(240)
def test_ctrl_c_during_produce_delivers_what_was_read(kafka, uid):
    topic = f"sigint-{uid}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamimg.cli", "produce", str(clip("bikes.mp4")), "--topic",
         topic, "--bootstrap", kafka.bootstrap, "--loop", "1000", "--encoding", "jpeg"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, cwd=ROOT,
        text=True)
    try:
        # Not read_topic: it reads to the end, which moves as fast as produce writes.
        wait_until(lambda: partitions_of(kafka, topic), 120, "the topic", interval_s=0.5)
        reader = Consumer(kafka.reader())
        reader.assign([TopicPartition(topic, 0, 0)])
        seen, deadline = 0, time.monotonic() + 120
        try:
            while seen < 5:
                assert time.monotonic() < deadline, f"{seen} frames in the topic after 120 s"
                seen += sum(m.error() is None for m in reader.consume(5, timeout=1.0))
        finally:
            reader.close()
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=120)
    finally:
        stop_process(proc, signal.SIGKILL)
    out, err = proc.stdout.read(), proc.stderr.read()
    assert code == 130, err
    assert "Traceback" not in err and "interrupted; delivering the frames read so far" in err
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["interrupted"] is True and summary["frames"] >= 5
    records = read_topic(kafka, topic)
    assert [int(dict(m.headers())["streamimg.frame"]) for m in records] == list(
        range(summary["frames"]))  # every frame read was delivered, once, in order
    assert summary["end_offsets"] == {"0": len(records)}


def test_consume_decodes_pixel_records_in_both_layouts(kafka, uid, tmp_path):
    grey = np.array([[0, 10, 20], [30, 40, 250]], dtype=np.uint8)
    image = tmp_path / "tiny.png"
    Image.fromarray(grey).save(image)
    for layout, flags in (("text", []), ("binary", ["--binary"])):
        topic = f"pixels-{layout}-{uid}"
        done = streamimg("produce-pixels", str(image), "--topic", topic, "--bootstrap",
                         kafka.bootstrap, "--name", "tiny", *flags)
        assert done.returncode == 0, done.stderr
        done = streamimg("consume", topic, "--bootstrap", kafka.bootstrap)
        assert done.returncode == 0, done.stderr
        pixels = [json.loads(x)["pixel"] for x in done.stdout.splitlines()]
        assert len(pixels) == grey.size
        assert {p["layout"] for p in pixels} == {layout}
        assert {(p["name"], p["frame"]) for p in pixels} == {("tiny", 0)}
        assert {(p["y"], p["x"]): p["v"] for p in pixels} == {
            (y, x): float(grey[y, x]) for y in range(2) for x in range(3)}


def test_librdkafka_logs_go_through_python_logging_once_per_line(caplog):
    import logging

    from confluent_kafka import Producer

    from streamimg.config import KAFKA_LOG, KafkaConfig, KafkaLog

    down = KafkaConfig(bootstrap=f"127.0.0.1:{free_port()}")
    assert down.common()["logger"] is KAFKA_LOG  # every client built from the config
    assert down.producer()["logger"] is KAFKA_LOG and down.reader()["logger"] is KAFKA_LOG
    caplog.set_level(logging.DEBUG, logger="streamimg.kafka")
    producer = Producer({**down.producer(), "logger": KafkaLog(), "message.timeout.ms": 3000})
    producer.produce("t", b"x")
    producer.flush(5)  # serves the log lines: refused connections, retried many times
    lines = [r for r in caplog.records if r.name == "streamimg.kafka"]
    assert lines and max(r.levelno for r in lines) <= logging.WARNING
    fails = [r for r in lines if "Connection refused" in r.getMessage()]
    assert len(fails) >= 2, [r.getMessage() for r in lines]
    assert [r.levelno for r in fails].count(logging.WARNING) == 1  # repeats go to DEBUG
