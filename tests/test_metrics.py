"""Prometheus metrics and health endpoints, scraped over real HTTP from a real daemon."""

from __future__ import annotations

import socket
import threading
import urllib.error
import urllib.request

import numpy as np
from confluent_kafka import Producer
from prometheus_client.parser import text_string_to_metric_families

import streamimg
from streamimg.admin import committed_offsets, ensure_topics
from streamimg.codecs.frame import encode_frame
from streamimg.daemon import Daemon
from streamimg.metrics import DaemonMetrics
from tests.helpers import start_daemon, stop_process, wait_until, write_topology


def get(port: int, path: str) -> tuple[int, str]:
    """``(status, body)`` of ``GET http://127.0.0.1:port/path`` (5 s bound)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:  # not listening (yet)
        return 0, ""


def scrape(port: int) -> dict[tuple[str, frozenset], float]:
    """``/metrics`` as ``{(sample name, frozenset(labels)): value}``."""
    status, text = get(port, "/metrics")
    assert status == 200, (status, text)
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples, name: str, **labels) -> float | None:
    """The value of the one sample ``name`` whose labels include ``labels`` (None if absent)."""
    found = [v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= ls]
    assert len(found) <= 1, (name, labels, found)
    return found[0] if found else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def produce_with_poison(kafka, topic: str, n: int) -> int:
    """``n`` small frames (frame 3 all 3s), then one header-less message; return the count."""
    producer = Producer(kafka.producer())
    for i in range(n):
        value_, headers = encode_frame(np.full((16, 24, 3), i, np.uint8), stream="s", index=i)
        producer.produce(topic, value=value_, key=b"s", headers=headers)
    producer.produce(topic, value=b"no headers at all", key=b"s")
    assert producer.flush(30) == 0
    return n + 1


def test_metrics_count_exactly_what_the_daemon_processed(kafka, client, uid):
    topic, name = f"in-{uid}", f"metrics-{uid}"
    ensure_topics(kafka, [topic])
    sent = produce_with_poison(kafka, topic, 12)  # 12 frames + 1 header-less message
    topology = streamimg.Topology(name, inputs=topic, max_frames=4, max_wait_ms=50)

    def check(frame):
        if round(float(frame.mean())) == 3:  # frame 3 fails in the analytics: a process DLQ
            raise RuntimeError("planted failure")
        return {"mean": float(frame.mean())}

    topology.source.gaussian_blur(1.0).analyze("stats", check).to_kafka_frames(
        "raw").to_kafka_analytics()
    daemon = Daemon(topology, kafka, client, instance="m0", drain_timeout_s=30)
    metrics = DaemonMetrics.attach(daemon)
    port = metrics.serve(0)
    result: dict[str, int] = {}
    thread = threading.Thread(target=lambda: result.setdefault("code", daemon.run()))
    try:
        # Before the daemon runs: the loop is not alive and nothing is assigned.
        assert get(port, "/healthz")[0] == 503
        assert get(port, "/readyz")[0] == 503
        assert get(port, "/nowhere")[0] == 404
        thread.start()
        wait_until(lambda: get(port, "/readyz")[0] == 200, 60, "/readyz 200")
        wait_until(lambda: get(port, "/healthz")[0] == 200, 30, "/healthz 200")
        wait_until(lambda: committed_offsets(kafka, name, [topic]).get((topic, 0), -1) >= sent,
                   120, "every message committed")
        labels = {"topology": name, "instance": "m0"}
        # Lag and in-flight refresh with the loop's tick (about once a second).
        wait_until(lambda: value(scrape(port), "streamimg_consumer_lag_frames", **labels,
                                 topic=topic, partition="0") == 0, 30, "lag 0")
        wait_until(lambda: value(scrape(port), "streamimg_batches_in_flight", **labels) == 0,
                   30, "no batch in flight")
        m = scrape(port)
        stats = daemon.stats
        part = {"topic": topic, "partition": "0"}
        assert value(m, "streamimg_frames_consumed_total", **labels,
                     **part) == sent == stats.frames_in
        assert value(m, "streamimg_frames_committed_total", **labels, **part) == sent - 2
        assert stats.frames_out == sent - 2
        assert value(m, "streamimg_dead_letters_total", **labels, **part, stage="decode") == 1
        assert value(m, "streamimg_dead_letters_total", **labels, **part, stage="process") == 1
        assert value(m, "streamimg_transactions_total", **labels,
                     outcome="committed") == stats.transactions >= 1
        assert value(m, "streamimg_transactions_total", **labels, outcome="aborted") == 0
        # One observation per committed frame and stage, in seconds.
        for stage in ("decode", "gaussian_blur", "stats"):
            assert value(m, "streamimg_stage_seconds_count", **labels,
                         stage=stage) == sent - 2, stage
            assert 0 < value(m, "streamimg_stage_seconds_sum", **labels, stage=stage) < 60
        assert value(m, "streamimg_commit_latency_seconds_count",
                     **labels) == stats.batches_committed
        assert 0 < value(m, "streamimg_commit_latency_seconds_sum", **labels) < 120
        assert get(port, "/healthz")[0] == 200 and get(port, "/readyz")[0] == 200
    finally:
        daemon.stop()
        if thread.is_alive():
            thread.join(60)
        metrics.close()
    assert not thread.is_alive() and result.get("code") == 0
    # Stopped: the consumer left the group, so nothing is assigned any more.
    assert not metrics.ready()


def test_run_serves_metrics_on_its_port(kafka, cluster, uid, tmp_path):
    topic, name = f"in-{uid}", f"metrics-cli-{uid}"
    ensure_topics(kafka, [topic])
    sent = produce_with_poison(kafka, topic, 6)
    path = write_topology(tmp_path / "t.py", name, topic,
                          ".gaussian_blur(1.0).to_kafka_frames('raw').to_kafka_analytics()",
                          max_frames=4, max_wait_ms=50)
    port = free_port()
    proc = start_daemon(path, kafka, cluster, tmp_path / "daemon.log", instance="cli",
                        extra=["--metrics-port", str(port)])
    try:
        wait_until(lambda: get(port, "/readyz")[0] == 200 or proc.poll() is not None, 90,
                   "/readyz 200")
        assert proc.poll() is None, (tmp_path / "daemon.log").read_text()
        assert get(port, "/healthz")[0] == 200
        labels = {"topology": name, "instance": "cli"}
        wait_until(lambda: value(scrape(port), "streamimg_frames_committed_total",
                                 **labels) == sent - 1, 120, "committed frames on /metrics")
        m = scrape(port)
        assert value(m, "streamimg_frames_consumed_total", **labels) == sent
        assert value(m, "streamimg_dead_letters_total", **labels, stage="decode") == 1
        assert value(m, "streamimg_stage_seconds_count", **labels, stage="decode") == sent - 1
    finally:
        code = stop_process(proc)
    assert code == 0, (tmp_path / "daemon.log").read_text()
    assert get(port, "/healthz")[0] == 0  # the server went with the process
