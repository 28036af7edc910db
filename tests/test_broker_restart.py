"""Scenario 4 of the fault-injection suite: the broker killed and restarted mid-stream.

The embedded broker runs on Tansu's S3 engine over a pip-installed moto server on loopback,
so topics, data and group offsets survive a SIGKILL. Frames stream into two partitions; one
daemon (``streamimg run``) processes them; the broker is SIGKILLed in the middle of one of
the daemon's transactions (found in moto's request log: its records stored and the commit
not begun, or its COMMIT marker stored in one output topic only) and restarted on the same
port and bucket 3 s later. The daemon must go on, or exit 3 with a clear ERROR line and be
started again (as a supervisor would); it must never crash (another exit code, a traceback)
or hang, and always honour SIGTERM within ``STOP_BOUND_S``; in the end every input offset is
committed. Exactly-once is asserted where the broker kept its transactions atomic: a kill
between the COMMIT markers of the two output topics tears the transaction (Tansu's S3 engine
writes them one after the other); the checker reports those inputs as ``torn``, the
broker's (see ``TORN_NOTE`` in the checker), and any other violation fails the test.

Before the watchdog (``Committer.check``, ``Committer.wait_checked``, ``Checkpoint.call``),
measured: after the restart the committer thread sat in ``send_offsets_to_transaction`` for
more than 95 s despite its 30 s timeout (confluentinc/librdkafka#5456), the poll thread
waited 60 s for it inside the ``lost`` rebalance callback with no log line, SIGTERM took 106
s, and the daemon died with a traceback (exit 1) from ``consumer.close()``. This test then
fails ("the daemon ignored SIGTERM for 60 s"). Now the daemon exits 3 with a line naming the
call once it is 45 s old, or 30 s once a stop is requested.

It runs under ``make chaos`` (``STREAMIMG_CHAOS=1``): four broker kills (two of them
mid-commit; SIGTERM once while the broker is down; ~5 min). ``make test`` skips it since
2026-12-02 to keep the suite under 15 minutes (one kill cost ~65 s of a 14-minute suite);
the suite keeps the frozen-broker tests (``tests/test_positions.py``,
``tests/test_checkpoint.py``), which SIGSTOP the broker under a blocked call.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time

import numpy as np
import pytest
from confluent_kafka import KafkaException

from streamimg.admin import committed_offsets, ensure_topics
from streamimg.config import KafkaConfig
from tests.harness.checker import Report, check_exactly_once, read_topic_log
from tests.harness.paced import PacedStream
from tests.harness.s3 import MotoS3
from tests.helpers import start_daemon, write_topology

CHAOS = os.environ.get("STREAMIMG_CHAOS") == "1"
BODY = ".gaussian_blur(sigma=1.0).to_kafka_frames(encoding='jpeg').to_kafka_analytics()"
# With the daemon's default fetch.wait.max.ms (10) every fetch on Tansu's S3 engine is an S3
# LIST that rarely finishes in time: measured 0.3-1 frame/s against ~8 at 500 ms.
S3_KAFKA = ["--kafka", "fetch.wait.max.ms=500"]
STOP_BOUND_S = 60  # SIGTERM must end the daemon within this, broker up or down
DOWN_S = 3.0  # the broker stays down this long
FATAL_LINE = re.compile(r"ERROR streamimg\.daemon: (stopping: |a transactional Kafka call)")
# Per broker kill: where in a transaction (see S3Requests: 1 = its records stored, before
# the commit; 3 = the broker stored the COMMIT marker of one output topic only), and when the
# daemon gets SIGTERM: None (never: if it exits 3, the supervisor starts it again),
# "broker_down" (while the broker is down), "after_restart" (10 s after the restart).
PLAN = ([(1, None), (3, "broker_down"), (1, "after_restart"), (3, None)] if CHAOS
        else [(1, "after_restart")])


class Supervisor:
    """Runs the daemon as a supervisor would: started again after exit 3; any other exit,
    or an exit 3 without a clear ERROR line, fails the test. Runs append to one log."""

    def __init__(self, topology, kafka, log, max_restarts=6):
        self.topology, self.kafka, self.log = topology, kafka, log
        self.max_restarts = max_restarts
        self.runs: list[tuple[int, int, str]] = []  # (pid, exit code, the run's log)
        self.proc: subprocess.Popen | None = None
        self._start_at = 0

    def start(self):
        assert len(self.runs) <= self.max_restarts, f"started {len(self.runs) + 1} times"
        self._start_at = self.log.stat().st_size if self.log.exists() else 0
        self.proc = start_daemon(self.topology, self.kafka, None, self.log, extra=S3_KAFKA)

    def run_log(self) -> str:
        with open(self.log, "rb") as f:
            f.seek(self._start_at)
            return f.read().decode(errors="replace")

    def _ended(self, code: int, allowed: tuple[int, ...]) -> str:
        text = self.run_log()
        self.runs.append((self.proc.pid, code, text))
        assert code in allowed, f"daemon exited {code}, not {allowed}:\n{text[-4000:]}"
        assert code != 3 or FATAL_LINE.search(text), f"exit 3, no ERROR line:\n{text[-4000:]}"
        assert "Traceback" not in text, text[-4000:]
        return text

    def check(self):
        """Start the daemon again if it exited 3 by itself."""
        code = self.proc.poll()
        if code is not None:
            self._ended(code, (3,))
            self.start()

    def wait_stopped(self, sent: float, timeout_s: float = STOP_BOUND_S) -> int:
        """The exit code of a daemon sent SIGTERM at ``sent`` (monotonic), which must come
        within ``timeout_s`` of it: 0, or 3 with a clear line."""
        try:
            code = self.proc.wait(timeout=max(0.0, sent + timeout_s - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"the daemon ignored SIGTERM for {timeout_s} s:\n"
                        f"{self.run_log()[-4000:]}")
        self._ended(code, (0, 3))
        return code

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


def committed_now(kafka, group, topic) -> dict:
    """The group's committed offsets, or {} while the broker does not answer."""
    try:
        return committed_offsets(kafka, group, [topic], timeout_s=5)
    except KafkaException:
        return {}


def wait_for(predicate, timeout_s, what, sup: Supervisor, interval_s=0.2):
    """Poll ``predicate`` while supervising the daemon; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        sup.check()
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}\n"
                        f"{sup.run_log()[-4000:]}")
        time.sleep(interval_s)


class S3Requests:
    """New lines of moto's request log (one line per S3 request, written as it answers).

    Tansu's S3 engine stores a transaction of the daemon as (measured): the record batch of
    each output topic, then at commit a COMMIT marker batch in each output topic, one after
    the other, then the group's offset of each input partition (one object each). So after
    the daemon's group offsets are stored, the next output batch is the next transaction's
    records (``n=1``: killed there, the transaction is open, before its commit), and the
    third is the COMMIT marker of the first output topic (``n=3``: killed there, the broker
    committed the transaction in one output topic only, and stored no offsets).
    """

    def __init__(self, path, group: str, outputs: list[str]):
        self.path, self.pos = path, path.stat().st_size
        self.offsets = re.compile(rf'"PUT \S+/groups/consumers/{re.escape(group)}/offsets/')
        self.outputs = re.compile(r'"PUT \S+/topics/(' + "|".join(map(re.escape, outputs))
                                  + r")/partitions/\d+/records/")

    def wait(self, n: int, timeout_s: float) -> str:
        """Wait for the ``n``-th output batch stored after the group's offsets."""
        deadline, seen = time.monotonic() + timeout_s, None
        while time.monotonic() < deadline:
            with open(self.path, "rb") as f:
                f.seek(self.pos)
                data = f.read()
            complete = data[:data.rfind(b"\n") + 1]
            self.pos += len(complete)
            for line in complete.decode(errors="replace").splitlines():
                if self.offsets.search(line):
                    seen = 0
                elif seen is not None and self.outputs.search(line):
                    seen += 1
                    if seen == n:
                        return line
            time.sleep(0.002)
        pytest.fail(f"no transaction reached output batch {n} in {timeout_s} s")


def all_but_torn(report: Report) -> dict:
    """Every violation except the torn transactions, which the checker puts on the broker."""
    return {k: getattr(report, k) for k in Report.VIOLATIONS
            if k != "torn" and getattr(report, k)}


@pytest.mark.skipif(not CHAOS, reason="make chaos only: ~65 s a broker kill (the suite keeps "
                    "the frozen-broker tests of test_positions.py and test_checkpoint.py)")
@pytest.mark.timeout(900 if CHAOS else 300)
def test_broker_killed_mid_transaction_and_restarted_on_s3(tmp_path, uid, bikes):
    topic, name = f"in-{uid}", f"brk-{uid}"
    images = [np.ascontiguousarray(b[:48, :64]) for b in bikes]
    tansu_log = tmp_path / "tansu.log"
    stops = []  # (when, exit code, seconds from SIGTERM to exit)
    with MotoS3(tmp_path) as s3:
        broker = s3.broker(log_path=tansu_log).start()
        kafka = KafkaConfig(bootstrap=broker.bootstrap, session_timeout_ms=2000,
                            heartbeat_interval_ms=500)
        ensure_topics(kafka, [topic], partitions=2)
        path = write_topology(tmp_path / "t.py", name, topic, BODY, max_frames=4,
                              max_wait_ms=50, max_in_flight=3)
        sup = Supervisor(path, kafka, tmp_path / "daemon.log")
        # 2 frames/s a partition while the broker dies and the daemon recovers; a broker
        # restart can desynchronise the camera's idempotent producer for good (fatal
        # OUT_OF_ORDER_SEQUENCE_NUMBER): a new producer goes on, as a camera's would.
        stream = PacedStream(kafka, topic, images, burst=1, pause_s=0.5,
                             cap=600 if CHAOS else 80, restart_on_error=True)

        def total():
            return sum(max(0, o) for o in committed_now(kafka, name, topic).values())

        try:
            sup.start()
            wait_for(lambda: total() >= 8, 120, "the first commits", sup)
            for k, (nth, when) in enumerate(PLAN):
                line = S3Requests(s3.log_path, name, [f"{name}.frames", f"{name}.analytics"]
                                  ).wait(nth, 60)
                broker.process.send_signal(signal.SIGKILL)
                broker.process.wait(timeout=10)
                print(f"kill {k}: broker SIGKILLed after PUT {line.split('/topics/')[1][:80]}"
                      f" (output batch {nth} of a transaction)")
                if when == "broker_down":
                    time.sleep(DOWN_S / 2)
                    sup.proc.send_signal(signal.SIGTERM)
                    sent = time.monotonic()
                    time.sleep(DOWN_S / 2)
                else:
                    time.sleep(DOWN_S)
                broker = s3.broker(port=broker.port, log_path=tansu_log).start()
                if when == "after_restart":
                    time.sleep(10)
                    sup.check()
                    sup.proc.send_signal(signal.SIGTERM)
                    sent = time.monotonic()
                if when is not None:
                    code = sup.wait_stopped(sent)
                    stops.append((when, code, round(time.monotonic() - sent, 1)))
                    sup.start()
                before = total()
                wait_for(lambda b=before: total() >= b + 4, 150,
                         f"progress after broker restart {k}", sup)
            stream.stop()
            # The input's end: what the log holds (the frames of a failed producer may be in
            # it or not; a fetch's high watermark is right on Tansu, ListOffsets is not).
            in_log = read_topic_log(broker.bootstrap, topic, timeout_s=60, keep_values=False)
            inputs = {(topic, p): hw for p, hw in in_log.high_watermarks.items()}
            wait_for(lambda: committed_now(kafka, name, topic) == inputs, 180,
                     f"the group to commit {inputs}", sup)
            sup.proc.send_signal(signal.SIGTERM)
            sent = time.monotonic()
            assert sup.wait_stopped(sent) == 0
            stops.append(("end", 0, round(time.monotonic() - sent, 1)))
            report = check_exactly_once(broker.bootstrap, inputs=inputs,
                                        outputs=[f"{name}.frames", f"{name}.analytics"],
                                        dlq=f"{name}.dlq", group=name, timeout_s=120)
        finally:
            sup.kill()
            stream.stop()
            broker.stop()
    blocked = [m.group(0) for _, _, text in sup.runs
               for m in re.finditer(r"stopping: .*", text)]
    print(f"runs (pid, exit): {[(pid, c) for pid, c, _ in sup.runs]}; SIGTERM to exit: "
          f"{stops}; fatal lines: {blocked}; input producers replaced: "
          f"{[e.strip().splitlines()[-1][:120] for e in stream.errors]}")
    print(report.summary())
    assert not all_but_torn(report), report.summary()
    # Every input record is a good input. Records, not offsets: after a broker SIGKILL the
    # S3 engine can leave an offset below the high watermark without a record (seen once in
    # make chaos: 616 records below high watermarks summing to 617).
    records = sum(1 for r in in_log.records if r.offset < inputs[(topic, r.partition)])
    print(f"input: {records} records below high watermarks summing to {sum(inputs.values())}")
    assert report.good_inputs == records, report.summary()
    assert sup.runs[-1][1] == 0 and len(sup.runs) >= 2, sup.runs  # it was stopped and restarted
