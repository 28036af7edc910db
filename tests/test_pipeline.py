"""The main job end to end: real frames through a real broker and a real LocalCluster."""

from __future__ import annotations

import json
import threading
from collections import defaultdict
from contextlib import contextmanager

import dask.array as da
import numpy as np
import pytest
import scipy.ndimage as ndi
from confluent_kafka import Producer

import streamimg
from streamimg.admin import committed_offsets, ensure_topics, read_topic
from streamimg.analytics.palette import palette
from streamimg.codecs.frame import decode_payload, encode_frame, parse_header
from streamimg.daemon import EXIT_FATAL, Daemon
from streamimg.operators.blur import gaussian_blur
from streamimg.sinks.records import read_lineage
from streamimg.sources.video import SourceFrame, produce_frames
from tests.helpers import wait_until, write_topology

SIGMA = 2.0


@contextmanager
def running(topology, kafka, client, instance="0"):
    daemon = Daemon(topology, kafka, client, instance=instance, drain_timeout_s=30)
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault("code", daemon.run()))
    thread.start()
    try:
        yield daemon, result
    finally:
        daemon.stop()
        thread.join(60)
        assert not thread.is_alive(), "daemon did not stop within 60 s"


def _all_committed(kafka, group, topic, ends):
    def check():
        got = committed_offsets(kafka, group, [topic])
        return all(got.get((topic, p), -1) >= end for p, end in ends.items())
    return check


def _produce(kafka, topic, frames, stream, partition):
    return produce_frames(kafka, topic, (SourceFrame(i, 1_000 + 40 * i, f)
                                         for i, f in enumerate(frames)),
                          stream=stream, partition=partition)


def test_bikes_end_to_end_equals_direct_computation(kafka, client, bikes, tmp_path, uid):
    topic, name = f"in-{uid}", f"va-{uid}"
    ensure_topics(kafka, [topic], partitions=2)
    # Two streams, one per partition, 12 real frames each.
    ends_a = _produce(kafka, topic, bikes[:12], "bikes-a", 0)
    ends_b = _produce(kafka, topic, bikes[12:], "bikes-b", 1)
    ends = {**ends_a, **ends_b}
    path = write_topology(tmp_path / "t.py", name, topic,
                          f".gaussian_blur(sigma={SIGMA}).palette(k=5, seed=0)"
                          ".to_kafka_frames(encoding='raw').to_kafka_analytics()",
                          max_frames=5, max_wait_ms=50)
    topology = streamimg.load_topology(path)
    with running(topology, kafka, client) as (daemon, _):
        wait_until(_all_committed(kafka, name, topic, ends), 120, "all offsets committed")
    assert committed_offsets(kafka, name, [topic]) == {(topic, 0): 12, (topic, 1): 12}

    analytics = [json.loads(m.value()) for m in read_topic(kafka, f"{name}.analytics")]
    frames = read_topic(kafka, f"{name}.frames")
    assert len(analytics) == len(frames) == 24
    assert read_topic(kafka, f"{name}.dlq") == []
    # Per stream, results come out in frame order.
    order = defaultdict(list)
    for a in analytics:
        order[a["stream"]].append(a["frame"])
    assert order == {"bikes-a": list(range(12)), "bikes-b": list(range(12))}

    direct = {}
    for stream, chunk in (("bikes-a", bikes[:12]), ("bikes-b", bikes[12:])):
        blurred = gaussian_blur(da.from_array(np.stack(chunk), chunks=(1, -1, -1, -1)),
                                SIGMA).compute(scheduler="sync")
        for i, b in enumerate(blurred):
            direct[(stream, i)] = b
    for a in analytics:
        expect = palette(direct[(a["stream"], a["frame"])], k=5, seed=0).to_dict()
        assert a["palette"] == expect
        assert a["source"]["topic"] == topic
    for m in frames:
        header = parse_header(m.headers())
        out = decode_payload(header, m.value())
        expect = direct[(header.stream, header.frame)]
        np.testing.assert_array_equal(out, expect)
        lineage = read_lineage(m.headers())
        assert lineage["run"] == daemon.run_id and lineage["topic"] == topic
        assert lineage["offset"] == header.frame  # one stream per partition, from offset 0
    # And the blur itself is SciPy's Gaussian, to rounding (independent reference).
    ref = ndi.gaussian_filter(bikes[0].astype(np.float64), sigma=(SIGMA, SIGMA, 0))
    assert np.abs(direct[("bikes-a", 0)].astype(float) - ref).max() <= 1.0


def test_poison_messages_go_to_the_dlq_and_the_stream_goes_on(kafka, client, bikes, tmp_path,
                                                              uid):
    topic, name = f"in-{uid}", f"dlq-{uid}"
    ensure_topics(kafka, [topic])
    small = [f[:64, :96] for f in bikes[:6]]
    producer = Producer(kafka.producer())
    sent = []

    def send(value, headers, what):
        producer.produce(topic, value=value, key=b"s", headers=headers)
        sent.append(what)

    for i, f in enumerate(small):
        value, headers = encode_frame(f, stream="s", index=i)
        if i == 1:   # unknown encoding: caught on the daemon, before Dask
            headers = [(k, b"webp" if k == "streamimg.encoding" else v) for k, v in headers]
            send(value, headers, "bad-encoding")
        elif i == 2:  # truncated raw payload: caught on the daemon
            send(value[:-7], headers, "truncated")
        elif i == 3:  # a PNG that is not one: fails decoding on a worker
            _, png_headers = encode_frame(f, stream="s", index=i, encoding="png")
            send(b"\x89PNG garbage", png_headers, "garbage-png")
        else:
            send(value, headers, "ok")
    send(b"no headers at all", None, "no-headers")
    value, headers = encode_frame(small[0], stream="s", index=99)
    send(value, headers, "boom")  # the topology's own analytics raise on frame 99
    assert producer.flush(30) == 0

    # Frame 99 fails inside a worker: the topology's analytics raise on its pixels
    # (frame 0 has the same pixels, so it fails too: offsets 0 and 7).
    path = tmp_path / "t.py"
    path.write_text(
        "from streamimg import Topology\n"
        f"SUM99 = {int(small[0].sum())}\n"
        f"topology = Topology({name!r}, inputs={topic!r}, max_frames=3, max_wait_ms=50)\n"
        "def check(frame):\n"
        "    if int(frame.sum()) == SUM99:\n"
        "        raise RuntimeError('planted failure on frame 99')\n"
        "    return {'mean': float(frame.mean())}\n"
        "(topology.source.analyze('stats', check)"
        ".to_kafka_frames(encoding='png').to_kafka_analytics())\n")
    topology = streamimg.load_topology(path)
    with running(topology, kafka, client):
        wait_until(_all_committed(kafka, name, topic, {0: len(sent)}), 120, "commit")
    dead = read_topic(kafka, f"{name}.dlq")
    assert sent == ["ok", "bad-encoding", "truncated", "garbage-png", "ok", "ok", "no-headers",
                    "boom"]
    reasons = {int(dict(m.headers())["streamimg.source.offset"]):
               (dict(m.headers())["streamimg.dlq.stage"].decode(),
                dict(m.headers())["streamimg.dlq.reason"].decode()) for m in dead}
    assert reasons[1] == ("decode", "streamimg.encoding: unknown encoding 'webp'")
    assert reasons[2][0] == "decode" and "bytes, but (64, 96, 3) uint8 needs" in reasons[2][1]
    assert reasons[3][0] == "decode" and "not a valid png" in reasons[3][1]
    assert reasons[6] == ("decode", "streamimg.schema: missing header")
    assert reasons[7][0] == "process" and "planted failure on frame 99" in reasons[7][1]
    assert reasons[0][0] == "process"  # same pixels as frame 99
    assert set(reasons) == {0, 1, 2, 3, 6, 7}
    # Dead letters keep the input whole.
    by_offset = {int(dict(m.headers())["streamimg.source.offset"]): m for m in dead}
    assert by_offset[6].value() == b"no headers at all"
    assert by_offset[2].key() == b"s"
    # The frames around the poison were processed.
    outs = read_topic(kafka, f"{name}.analytics")
    assert sorted(read_lineage(m.headers())["offset"] for m in outs) == [4, 5]


def test_a_newer_instance_fences_the_older_one(kafka, client, bikes, tmp_path, uid):
    topic, name = f"in-{uid}", f"fence-{uid}"
    ensure_topics(kafka, [topic])
    small = [f[:32, :32] for f in bikes[:4]]
    path = write_topology(tmp_path / "t.py", name, topic, ".to_kafka_analytics()",
                          max_frames=1, max_wait_ms=10)
    ends = _produce(kafka, topic, small[:2], "s", 0)
    with running(streamimg.load_topology(path), kafka, client) as (old_daemon, old):
        wait_until(_all_committed(kafka, name, topic, ends), 60, "first commits")
        # What a newer instance with the same id does first: init_transactions, which
        # fences the old producer. (A bare producer, so no consumer-group rebalance
        # decides which daemon holds the partition.)
        newer = Producer(kafka.producer(old_daemon.transactional_id))
        newer.init_transactions(30)
        _produce(kafka, topic, small[2:], "s", 0)
        # The old daemon learns it at its next transaction and must stop with code 3.
        wait_until(lambda: "code" in old, 60, "the fenced daemon to stop")
        assert old["code"] == EXIT_FATAL
    assert committed_offsets(kafka, name, [topic]) == {(topic, 0): 2}  # nothing moved
    # A new instance with the same id takes over and finishes the input.
    with running(streamimg.load_topology(path), kafka, client) as (_, new):
        wait_until(_all_committed(kafka, name, topic, {0: 4}), 60, "the new one commits")
    assert new["code"] == 0


@pytest.mark.parametrize("bad,message", [
    ("topology = 3\n", "must assign a streamimg.Topology"),
    ("import nonexistent_module_xyz\n", "ModuleNotFoundError"),
    ("from streamimg import Topology\ntopology = Topology('bad name!', inputs='x')\n",
     "not a legal Kafka topic name"),
    ("from streamimg import Topology\ntopology = Topology('t', inputs='x')\n", "no Kafka sink"),
    ("from streamimg import Topology\ntopology = Topology('t', inputs='x', max_frames=0)\n"
     "topology.source.to_kafka_analytics()\n", "max_frames=0"),
    ("from streamimg import Topology\ntopology = Topology('t', inputs='x')\n"
     "topology.source.gaussian_blur(sigma=-1).to_kafka_analytics()\n", "sigma must be > 0"),
    ("from streamimg import Topology\ntopology = Topology('t', inputs='x')\n"
     "topology.source.to_kafka_frames(encoding='gif')\n", "encoding 'gif'"),
    ("from streamimg import Topology\ntopology = Topology('t', inputs='x')\n"
     "topology.source.to_kafka_analytics(topic='x')\n", "also an input"),
])
def test_bad_topology_fails_at_start_up(bad, message, tmp_path):
    path = tmp_path / "bad.py"
    path.write_text(bad)
    with pytest.raises(streamimg.TopologyError, match=message):
        streamimg.load_topology(path)
