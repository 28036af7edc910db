"""Operating the daemon (issue 10): `run --check`, `--log-format json`, docker-compose.yml.

Real `streamimg` subprocesses against the session broker; the compose file is checked
by loading it (no Docker engine here) and by running its healthcheck against a real daemon.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import yaml
from confluent_kafka import Consumer, Producer, TopicPartition

from streamimg.admin import committed_offsets, connect, ensure_topics
from streamimg.broker import free_port
from streamimg.cli import build_parser
from streamimg.codecs.frame import encode_frame
from tests.helpers import ROOT, TEST_KAFKA, stop_process, wait_until, write_topology

KAFKA_FLAGS = [x for k, v in TEST_KAFKA.items() for x in ("--kafka", f"{k}={v}")]


def streamimg(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "streamimg.cli", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT, stdin=subprocess.DEVNULL)


def error_line(done, command: str = "run") -> str:
    """The one line the command printed for its error; no traceback, no librdkafka output."""
    assert "Traceback" not in done.stderr and "%3|" not in done.stderr, done.stderr
    lines = [x for x in done.stderr.splitlines() if x.startswith(f"streamimg {command}:")]
    assert len(lines) == 1, done.stderr
    return lines[0]


def produce_frames(kafka, topic: str, n: int) -> None:
    producer = Producer(kafka.producer())
    for i in range(n):
        value, headers = encode_frame(np.full((16, 24, 3), i, np.uint8), stream="s", index=i)
        producer.produce(topic, value=value, key=b"s", headers=headers)
    assert producer.flush(30) == 0


def commit(kafka, group: str, topic: str, offset: int) -> None:
    """Commit ``offset`` on ``topic``[0] for ``group``, as an earlier run would have."""
    consumer = Consumer({**kafka.common(), "group.id": group, "enable.auto.commit": False})
    try:
        consumer.commit(offsets=[TopicPartition(topic, 0, offset)], asynchronous=False)
    finally:
        consumer.close()


def test_run_check_validates_and_changes_nothing(kafka, uid, tmp_path):
    name, topic = f"check-{uid}", f"in-{uid}"
    path = write_topology(tmp_path / "t.py", name, topic,
                          ".gaussian_blur(1.0).analyze('mean', lambda f: float(f.mean()))"
                          ".to_kafka_frames('png').to_kafka_analytics()")
    ensure_topics(kafka, [topic])
    produce_frames(kafka, topic, 3)
    commit(kafka, name, topic, 2)
    before = connect(kafka)

    done = streamimg("run", str(path), "--check", "--bootstrap", kafka.bootstrap, *KAFKA_FLAGS)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 1, done.stdout
    line = lines[0]
    assert f"topology {name!r} OK" in line
    assert f"inputs: {topic};" in line
    assert f"{name}.frames" in line and f"{name}.analytics" in line and f"{name}.dlq" in line
    assert "stages: decode, gaussian_blur, mean, encode" in line, line
    assert f"Kafka at {kafka.bootstrap} answers, 2 --kafka setting(s) accepted" in line
    assert f"transactional.id {name}-0" in line
    assert "Dask dashboard" not in done.stderr  # no cluster started
    # Nothing consumed, committed or created.
    assert committed_offsets(kafka, name, [topic]) == {(topic, 0): 2}
    assert connect(kafka) == before

    # A missing input: exit 2 naming it; with --create-topics, reported and still not created.
    missing = f"missing-{uid}"
    other = write_topology(tmp_path / "m.py", f"check2-{uid}", missing, ".to_kafka_analytics()")
    done = streamimg("run", str(other), "--check", "--bootstrap", kafka.bootstrap)
    assert done.returncode == 2
    assert f"input topic {missing!r} does not exist" in error_line(done)
    done = streamimg("run", str(other), "--check", "--create-topics", "--bootstrap",
                     kafka.bootstrap)
    assert done.returncode == 0, done.stderr
    assert f"inputs: {missing} (missing: --create-topics creates it)" in done.stdout
    assert connect(kafka) == before

    # A librdkafka setting it does not know, or a bad value: exit 2, one line.
    for setting, what in (("no.such.setting=1", 'No such configuration property: '
                                                '"no.such.setting"'),
                          ("fetch.wait.max.ms=soon", '"fetch.wait.max.ms"')):
        done = streamimg("run", str(path), "--check", "--bootstrap", kafka.bootstrap,
                         "--kafka", setting)
        assert done.returncode == 2, (setting, done.stderr)
        assert what in error_line(done), setting
    # A topology that fails its start-up check: exit 2; no broker: exit 4.
    bad = write_topology(tmp_path / "bad.py", f"bad-{uid}", topic,
                         ".gaussian_blur(sigma=0).to_kafka_analytics()")
    done = streamimg("run", str(bad), "--check", "--bootstrap", kafka.bootstrap)
    assert done.returncode == 2 and "sigma must be > 0" in error_line(done)
    down = f"127.0.0.1:{free_port()}"
    done = streamimg("run", str(path), "--check", "--bootstrap", down, "--connect-timeout", "2")
    assert done.returncode == 4 and f"no Kafka broker answered at {down}" in error_line(done)
    assert committed_offsets(kafka, name, [topic]) == {(topic, 0): 2}
    assert connect(kafka) == before


def compose_daemon() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["daemon"]


def healthcheck_code(port: int) -> str:
    """The compose healthcheck's Python, pointed at ``port`` instead of 9100."""
    test = compose_daemon()["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"], test
    assert "http://127.0.0.1:9100/healthz" in test[3]
    return test[3].replace(":9100/", f":{port}/")


def test_json_logs_one_object_per_line_with_run_and_transactional_id(kafka, uid, tmp_path):
    name, topic, n = f"json-{uid}", f"in-{uid}", 30
    path = write_topology(tmp_path / "t.py", name, topic,
                          ".gaussian_blur(1.0).to_kafka_analytics()", max_frames=2)
    ensure_topics(kafka, [topic])
    produce_frames(kafka, topic, n)
    port = free_port()
    log = tmp_path / "stderr.log"
    with open(log, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamimg.cli", "run", str(path), "--bootstrap",
             kafka.bootstrap, *KAFKA_FLAGS, "--workers", "1", "--log-format", "json",
             "--metrics-port", str(port)],
            cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
    check = [sys.executable, "-c", healthcheck_code(port)]
    try:
        wait_until(lambda: committed_offsets(kafka, name, [topic]).get((topic, 0), -1) >= n,
                   120, "every frame committed")
        # docker-compose.yml's healthcheck, run against this daemon: healthy.
        wait_until(lambda: subprocess.run(check, timeout=30).returncode == 0, 30,
                   "the compose healthcheck passing")
    finally:
        code = stop_process(proc, timeout_s=90)
    assert code == 0, log.read_text()[-3000:]
    assert subprocess.run(check, capture_output=True, timeout=30).returncode != 0  # stopped

    lines = log.read_text().splitlines()
    assert lines
    records = []
    for text in lines:
        try:
            records.append(json.loads(text))
        except ValueError:
            raise AssertionError(f"not a JSON line: {text!r}") from None
    for r in records:
        assert {"time", "level", "logger", "message"} <= set(r), r
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", r["time"]), r
    events = {r["event"]: r for r in records if "event" in r}
    assert {"start", "assign", "stop"} <= set(events), [r["message"] for r in records]
    run = events["start"]["run"]
    assert re.fullmatch(r"[0-9a-f]{12}", run)
    for event in ("start", "assign", "stop"):
        assert events[event]["run"] == run, events[event]
        assert events[event]["transactional_id"] == f"{name}-0", events[event]
        assert events[event]["logger"] == "streamimg.daemon"
    assert f'"frames_out": {n}' in events["stop"]["message"]
    # Start-up's objects are frozen before the first poll: a full collection (135-184 ms
    # with the GIL held on the light benchmark's ~250,000) must not walk them again.
    frozen = [r for r in records if r["logger"] == "streamimg.cli"
              and r["message"].startswith("froze ")]
    assert len(frozen) == 1 and int(frozen[0]["message"].split()[1]) > 10_000, frozen
    assert records.index(frozen[0]) < records.index(events["assign"])
    # Every line from the daemon's logger carries both; nothing per frame at INFO.
    for r in records:
        if r["logger"] == "streamimg.daemon":
            assert r["run"] == run and r["transactional_id"] == f"{name}-0", r
    info = [r for r in records if r["level"] == "INFO"]
    assert len(info) < n // 2, [r["message"] for r in info]  # 15 batches of 2 frames


def test_compose_daemon_serves_metrics_and_is_health_checked():
    daemon = compose_daemon()
    command = daemon["command"]
    assert command[:2] == ["streamimg", "run"]
    args = build_parser().parse_args(command[1:])  # every flag exists, with a valid value
    assert (args.metrics_port, args.metrics_host) == (9100, "0.0.0.0")
    assert (ROOT / args.topology).is_file()
    assert args.scheduler == "tcp://scheduler:8786" and args.bootstrap == "kafka:9092"
    health = daemon["healthcheck"]
    assert "/healthz" in health["test"][3]
    for key in ("interval", "timeout", "start_period"):
        assert re.fullmatch(r"\d+s", health[key]), (key, health[key])
    assert int(health["retries"]) >= 1
    assert "9100:9100" in daemon["ports"]
    readme = (ROOT / "README.md").read_text()
    docker = readme.split("## Docker")[1].split("\n## ")[0]
    assert "9100" in docker and "/healthz" in docker
