"""The videos topic: analysis requests become frames, exactly-once, resumable after kill -9.

`streamimg submit` writes requests; `streamimg ingest` (a real subprocess against the
embedded broker) is killed with SIGKILL in the middle of a video, between producing a
transaction's frames and committing it, and restarted: the committed frames are each
frame of the video exactly once, byte-identical to encoding the decoded video directly;
requests that cannot be read or opened go to the dead-letter topic with the reason.
Outcomes are read from the log's transaction markers (tests/harness/checker.py): the
embedded broker leaves aborted records visible to read_committed readers.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest

from streamimg.codecs.frame import encode_frame, parse_header
from streamimg.sources.ingest import RequestError, VideoRequest
from streamimg.sources.video import read_video
from tests.harness.checker import read_log
from tests.helpers import ROOT, TEST_KAFKA, clip, stop_process, wait_until

KAFKA_FLAGS = [x for k, v in TEST_KAFKA.items() for x in ("--kafka", f"{k}={v}")]


def streamimg(kafka, *args, env=None, log=None):
    cmd = [sys.executable, "-m", "streamimg.cli", *args, "--bootstrap", kafka.bootstrap,
           *KAFKA_FLAGS]
    if log is None:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=ROOT)
    with open(log, "ab") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
                                stdin=subprocess.DEVNULL, env=env)


def committed(kafka, topic):
    return [r for r in read_log(kafka.bootstrap, topic) if r.outcome == "committed"]


@pytest.mark.timeout(300)
def test_ingest_killed_mid_video_resumes_at_the_committed_frame(kafka, uid, tmp_path):
    requests, frames = f"videos-{uid}", f"frames-{uid}"
    video = str(clip("bikes.mp4"))
    for args in ((video, "--id", "bikes", "--frame-step", "2", "--limit", "30"),
                 (str(tmp_path / "missing.mp4"), "--id", "missing")):
        done = streamimg(kafka, "submit", *args, "--requests", requests)
        assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["id"] == "missing"
    from confluent_kafka import Producer
    producer = Producer(kafka.producer())
    producer.produce(requests, key=b"junk", value=b"{not json")
    assert producer.flush(30) == 0

    log = tmp_path / "ingest.log"
    args = ["ingest", "--requests", requests, "--frames", frames, "--chunk-frames", "5",
            "--group", f"ingest-{uid}"]
    import os
    first = streamimg(kafka, *args, log=log,
                      env={**os.environ, "STREAMIMG_CRASH_AT": "after_produce:4"})
    try:
        assert first.wait(120) == -signal.SIGKILL, log.read_text()[-3000:]
    finally:
        stop_process(first, signal.SIGKILL)
    second = streamimg(kafka, *args, log=log)
    try:
        wait_until(lambda: len(committed(kafka, f"{requests}.dlq")) == 2, 120,
                   "every request handled")
    finally:
        assert stop_process(second) == 0, log.read_text()[-3000:]
    text = log.read_text()
    assert "ingest bikes: resuming at frame 15" in text, text[-3000:]

    got = {}
    for r in committed(kafka, frames):
        h = parse_header(list(r.headers))
        assert h.stream == "bikes" and r.key == b"bikes"
        assert h.frame not in got, f"frame {h.frame} committed twice"
        got[h.frame] = (r.value, h)
    assert sorted(got) == list(range(30))
    start_ms = got[0][1].timestamp_ms
    for f in read_video(video, frame_step=2, limit=30, start_ms=start_ms):
        value, headers = encode_frame(f.image, stream="bikes", index=f.index,
                                      timestamp_ms=f.timestamp_ms, encoding="jpeg")
        assert got[f.index][0] == value, f"frame {f.index} differs from the direct decode"
        assert got[f.index][1] == parse_header(headers)

    status = {}
    for r in committed(kafka, f"{requests}.status"):
        status[r.key.decode()] = json.loads(r.value)
    assert status["bikes"]["state"] == "done" and status["bikes"]["frames"] == 30
    assert status["missing"]["state"] == "failed"
    assert "missing.mp4 does not exist" in status["missing"]["error"]
    dead = {r.key: dict(r.headers) for r in committed(kafka, f"{requests}.dlq")}
    assert b"does not exist" in dead[b"missing"]["streamimg.dlq.reason"]
    assert dead[b"junk"]["streamimg.dlq.reason"].startswith(b"bad request: value is not JSON")


def test_requests_are_checked_field_by_field():
    ok = VideoRequest.parse(b"k", b'{"source": "a.mp4", "frame_step": 3, "models": ["faces"]}')
    assert (ok.id, ok.source, ok.frame_step, ok.limit, ok.models) == ("k", "a.mp4", 3, None,
                                                                      ("faces",))
    assert VideoRequest.parse(None, ok.to_json()) == ok
    for value, match in ((b"[]", "JSON object"), (b'{"source": ""}', "source"),
                         (b'{"source": "a", "frame_step": 0}', "frame_step"),
                         (b'{"source": "a", "limit": -1}', "limit"),
                         (b'{"source": "a", "models": "faces"}', "models")):
        with pytest.raises(RequestError, match=match):
            VideoRequest.parse(b"k", value)
    with pytest.raises(RequestError, match="id must be"):
        VideoRequest.parse(None, b'{"source": "a"}')
