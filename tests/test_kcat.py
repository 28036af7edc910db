"""Interop without Python: frames produced with kcat go through the daemon, and kcat reads
its output frames back with the same key, headers and payload bytes Python reads.

kcat runs on the librdkafka that the confluent-kafka wheel ships (a C library, loaded
through ``LD_LIBRARY_PATH``): Debian 12's kcat links librdkafka 2.0.2, which cannot parse
the embedded broker's ApiVersions v3 response ("Protocol read buffer underflow for
ApiVersion v3", then "All broker connections are down") - a client/broker protocol defect
unrelated to the message format; 2.16 reads it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from pathlib import Path

import confluent_kafka
import numpy as np
import pytest
from PIL import Image

import streamimg
from streamimg.admin import committed_offsets, ensure_topics, read_topic
from streamimg.codecs.frame import decode_payload, parse_header
from streamimg.daemon import Daemon
from tests.helpers import wait_until

pytestmark = pytest.mark.skipif(shutil.which("kcat") is None,
                                reason="kcat is not on PATH (Debian: apt-get install kcat)")


@pytest.fixture
def kcat(kafka, tmp_path):
    """``kcat(*args) -> stdout``: kcat on the test broker (``-X``: librdkafka settings)."""
    env = dict(os.environ)
    wheel = sorted(Path(confluent_kafka.__file__).parent.parent.glob(
        "confluent_kafka.libs/librdkafka*.so*"))
    if wheel:  # see the module's docstring
        (tmp_path / "lib").mkdir()
        (tmp_path / "lib" / "librdkafka.so.1").symlink_to(wheel[0])
        env["LD_LIBRARY_PATH"] = str(tmp_path / "lib")

    def run(*args) -> bytes:
        done = subprocess.run(["kcat", "-q", "-m", "10", "-X",
                               f"bootstrap.servers={kafka.bootstrap}", *args],
                              capture_output=True, timeout=60, env=env,
                              stdin=subprocess.DEVNULL)
        assert done.returncode == 0, done.stderr.decode(errors="replace")
        return done.stdout
    return run


def test_kcat_produces_frames_the_daemon_reads_and_reads_its_output(kafka, client, kcat, uid,
                                                                    tmp_path):
    topic, name = f"kcat-in-{uid}", f"kcat-{uid}"
    ensure_topics(kafka, [topic])
    rng = np.random.default_rng(5)
    images = [rng.integers(0, 256, (12, 16, 3), dtype=np.uint8) for _ in range(2)]
    (tmp_path / "f0.raw").write_bytes(images[0].tobytes())  # C-order RGB bytes
    Image.fromarray(images[1]).save(tmp_path / "f1.png")  # any PNG file is a png frame
    for i, (file, encoding) in enumerate([("f0.raw", "raw"), ("f1.png", "png")]):
        headers = {"schema": 1, "stream": "cam", "frame": i, "ts": 1_000 + 40 * i,
                   "height": 12, "width": 16, "channels": 3, "dtype": "uint8",
                   "encoding": encoding, "order": "RGB"}
        flags = [f"-Hstreamimg.{k}={v}" for k, v in headers.items()]
        # -P with a file argument: the whole file is one message's value; -k its key.
        kcat("-P", "-t", topic, "-k", "cam", *flags, str(tmp_path / file))

    topology = streamimg.Topology(name, inputs=topic, max_frames=2, max_wait_ms=50)
    topology.source.map_frames(lambda x: 255 - x).to_kafka_frames(encoding="raw")
    daemon = Daemon(topology, kafka, client, drain_timeout_s=30)
    thread = threading.Thread(target=daemon.run)
    thread.start()
    try:
        wait_until(lambda: committed_offsets(kafka, name, [topic]).get((topic, 0), -1) >= 2,
                   60, "kcat's 2 frames committed")
    finally:
        daemon.stop()
        thread.join(60)
    assert not thread.is_alive(), "daemon did not stop within 60 s"
    assert read_topic(kafka, f"{name}.dlq") == []

    # kcat prints key, value length, headers (n=v CSV) and the value bytes of each record.
    out = kcat("-C", "-t", f"{name}.frames", "-o", "beginning", "-e",
               "-f", "%k\t%S\t%h\t%s\n")
    python = read_topic(kafka, f"{name}.frames")  # confluent-kafka, read_committed
    assert len(python) == 2
    for i, m in enumerate(python):
        key, size, headers, out = out.split(b"\t", 3)
        value, out = out[:int(size)], out[int(size) + 1:]
        assert (key, value) == (m.key(), m.value()) == (b"cam", value)
        assert headers == b",".join(k.encode() + b"=" + v for k, v in m.headers())
        header = parse_header(m.headers())
        assert (header.stream, header.frame, header.timestamp_ms) == ("cam", i, 1_000 + 40 * i)
        assert (header.encoding, header.order, header.shape) == ("raw", "RGB", (12, 16, 3))
        np.testing.assert_array_equal(decode_payload(header, value), 255 - images[i])
    assert out == b""
