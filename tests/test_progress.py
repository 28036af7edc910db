"""Progress bars: frame counts known before reading, the bar's columns, clean stdout."""

from __future__ import annotations

import io
import json
import math
import re
import subprocess
import sys

import av
import numpy as np
import pytest
from PIL import Image
from rich.console import Console

from streamimg.admin import read_topic
from streamimg.progress import progress_bar
from streamimg.sources.folders import image_frames
from streamimg.sources.video import count_frames, read_video
from tests.helpers import ROOT, clip

ANSI_OR_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")  # ESC, CR, ...: not \t or \n


def streamimg(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "streamimg.cli", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT, stdin=subprocess.DEVNULL)


def _remux(src, dst, fmt: str):
    """Copy the video packets of ``src`` into ``dst`` (format ``fmt``), re-encoding nothing."""
    with av.open(str(src)) as inp, av.open(str(dst), "w", format=fmt) as out:
        stream = out.add_stream_from_template(inp.streams.video[0])
        for packet in inp.demux(inp.streams.video[0]):
            if packet.dts is not None:
                packet.stream = stream
                out.mux(packet)
    return dst


@pytest.mark.parametrize("name, step, loop, limit", [
    ("bikes.mp4", 1, 1, None), ("bikes.mp4", 3, 1, None), ("bikes.mp4", 7, 2, None),
    ("bikes.mp4", 4, 3, 100), ("bigbuckbunny.mp4", 5, 2, None),
    ("carphone_pristine.mp4", 1, 1, 10)])
def test_count_frames_equals_what_read_video_yields(name, step, loop, limit):
    path = clip(name)
    counted = count_frames(path, frame_step=step, loop=loop, limit=limit)
    read = sum(1 for _ in read_video(path, frame_step=step, loop=loop, limit=limit))
    assert counted == read
    assert count_frames(path) == {"bikes.mp4": 250, "bigbuckbunny.mp4": 132,
                                  "carphone_pristine.mp4": 120}[name]


def test_count_frames_without_a_recorded_count(tmp_path):
    mkv = _remux(clip("bikes.mp4"), tmp_path / "bikes.mkv", "matroska")  # duration x rate
    with av.open(str(mkv)) as c:
        assert c.streams.video[0].frames == 0  # Matroska records no frame count
    assert count_frames(mkv) == 250 == sum(1 for _ in read_video(mkv))
    assert count_frames(mkv, frame_step=4, loop=2) == math.ceil(500 / 4)
    raw = _remux(clip("bikes.mp4"), tmp_path / "bikes.h264", "h264")  # no duration either
    assert count_frames(raw) is None


def test_count_frames_of_a_folder(tmp_path):
    for i in range(7):
        Image.fromarray(np.full((4, 5, 3), i, np.uint8)).save(tmp_path / f"f{i}.png")
    Image.fromarray(np.zeros((4, 5, 3), np.uint8)).save(tmp_path / "g.JPG")  # any case
    (tmp_path / "notes.txt").write_text("not an image")
    for step, limit, expected in [(1, None, 8), (2, None, 4), (3, None, 3), (3, 2, 2),
                                  (1, 100, 8), (8, None, 1)]:
        assert count_frames(tmp_path, frame_step=step, limit=limit) == expected
        assert sum(1 for _ in image_frames(tmp_path, frame_step=step, limit=limit)) == expected
    assert count_frames(tmp_path, loop=5) == 8  # loop does not apply to folders
    (tmp_path / "h.png").write_bytes(b"broken")  # counted: only reading finds it broken
    assert count_frames(tmp_path) == 9


def test_count_frames_refuses_what_read_video_refuses(tmp_path):
    with pytest.raises(FileNotFoundError):
        count_frames(tmp_path / "missing.mp4")
    with pytest.raises(ValueError, match="frame_step=0"):
        count_frames(clip("bikes.mp4"), frame_step=0)
    text = tmp_path / "video.mp4"
    text.write_text("not a video")
    with pytest.raises(ValueError, match="not a video"):
        count_frames(text)


def _render(total: int | None, unit: str) -> str:
    """The last line the bar draws on a terminal after 5 advances of 2, a (fake) second apart."""
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=160, color_system=None)
    progress = progress_bar(unit, console=console, transient=False)
    now = [0.0]
    progress.get_time = lambda: now[0]  # read by tasks added from here on
    with progress:
        task = progress.add_task("producing bikes.mp4 -> frames", total=total)
        for _ in range(5):
            now[0] += 1.0
            progress.advance(task, 2)
    return out.getvalue().split("\r\x1b[2K")[-1]  # each redraw clears the line first


def test_bar_shows_count_rate_elapsed_and_eta_when_the_total_is_known():
    final = _render(40, "frames")
    assert "producing bikes.mp4 -> frames" in final
    assert "10/40" in final and "2.0 frames/s" in final, final
    assert "0:00:05" in final and "eta 0:00:15" in final, final  # 30 left at 2 a second


def test_bar_shows_count_and_rate_but_no_eta_without_a_total():
    final = _render(None, "records")
    assert re.search(r" 10 +2\.0 records/s +0:00:05", final), final
    assert "eta" not in final and "/?" not in final


def test_bar_writes_to_stderr_and_nothing_without_a_terminal(capsys):
    with progress_bar("frames") as progress:
        task = progress.add_task("x", total=3)
        progress.advance(task, 3)
    out, err = capsys.readouterr()
    assert out == "" and err == ""  # not a terminal, transient: nothing at all


def test_produce_and_consume_keep_stdout_pure_json(kafka, uid):
    topic = f"progress-{uid}"
    done = streamimg("produce", str(clip("bikes.mp4")), "--topic", topic, "--bootstrap",
                     kafka.bootstrap, "--frame-step", "10", "--encoding", "jpeg")
    assert done.returncode == 0, done.stderr
    assert not ANSI_OR_CONTROL.search(done.stdout + done.stderr), repr(done.stderr)
    assert done.stdout.startswith("{") and done.stdout.count("\n") == 1, done.stdout
    summary = json.loads(done.stdout)  # exactly one JSON document, nothing else
    assert summary["frames"] == 25 == count_frames(clip("bikes.mp4"), frame_step=10)

    done = streamimg("consume", topic, "--bootstrap", kafka.bootstrap)
    assert done.returncode == 0, done.stderr
    assert not ANSI_OR_CONTROL.search(done.stdout + done.stderr), repr(done.stderr)
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(lines) == 25
    assert [x["headers"]["streamimg.frame"] for x in lines] == [str(i) for i in range(25)]


def test_read_topic_reports_records_read_and_the_end_offsets(kafka, uid):
    topic = f"progress-{uid}"
    done = streamimg("produce", str(clip("bikes.mp4")), "--topic", topic, "--bootstrap",
                     kafka.bootstrap, "--limit", "6", "--encoding", "jpeg", "--partitions",
                     "2")
    assert done.returncode == 0, done.stderr
    reports: list[tuple[int, int | None]] = []
    records = read_topic(kafka, topic, on_progress=lambda read, end: reports.append(
        (read, end)))
    assert len(records) == 6
    assert reports and reports[-1] == (6, 6)
    assert [r for r, _ in reports] == sorted(r for r, _ in reports)
    assert {end for _, end in reports} <= {None, 6}


def _with_stderr_on_a_terminal(*args) -> tuple[int, str, str]:
    """Run ``streamimg *args`` with stderr on a pseudo-terminal; (code, stdout, terminal)."""
    import os
    import pty
    import threading

    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "streamimg.cli", *args],
                            stdout=subprocess.PIPE, stderr=slave, stdin=subprocess.DEVNULL,
                            cwd=ROOT, env={**os.environ, "TERM": "xterm", "COLUMNS": "200"})
    os.close(slave)
    chunks: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed its end
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        out, _ = proc.communicate(timeout=120)
    finally:
        reader.join(10)
        os.close(master)
    return proc.returncode, out.decode(), b"".join(chunks).decode(errors="replace")


def test_on_a_terminal_the_bar_goes_to_stderr_and_stdout_stays_json(kafka, uid):
    topic = f"progress-{uid}"
    code, out, tty = _with_stderr_on_a_terminal(
        "produce", str(clip("bikes.mp4")), "--topic", topic, "--bootstrap", kafka.bootstrap,
        "--limit", "60", "--encoding", "jpeg")
    assert code == 0, tty
    assert json.loads(out)["frames"] == 60 and out.count("\n") == 1, out
    assert f"producing bikes.mp4 -> {topic}" in tty and "/60" in tty, tty
    assert "frames/s" in tty and "eta " in tty, tty
    code, out, tty = _with_stderr_on_a_terminal("consume", topic, "--bootstrap",
                                                kafka.bootstrap)
    assert code == 0, tty
    assert len([json.loads(line) for line in out.splitlines()]) == 60
    assert not ANSI_OR_CONTROL.search(out)
    assert f"reading {topic}" in tty and "records/s" in tty, tty


def test_rate_is_the_mean_since_the_start_until_rich_has_two_samples():
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=160, color_system=None)
    progress = progress_bar("records", console=console, transient=False)
    now = [0.0]
    progress.get_time = lambda: now[0]
    with progress:
        task = progress.add_task("reading t", total=None)
        now[0] = 4.0
        progress.update(task, completed=10, total=10)  # everything in one batch
    assert "10/10 2.5 records/s 0:00:04" in out.getvalue().split("\r\x1b[2K")[-1]
