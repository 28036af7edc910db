"""Fault injection: the daemon as a black box, killed at named points and at random, its
Dask workers killed mid-batch, one of two daemons in a group killed and restarted while
frames stream in; every check is made from the log's transaction markers.

``make test`` runs the fast subset (a few kills each); ``make chaos`` sets
``STREAMIMG_CHAOS=1`` for at least 10 daemon kills and 5 worker kills.
"""

from __future__ import annotations

import ast
import json
import os
import random
import re
import signal
import subprocess
import time

import numpy as np
import pytest

from streamimg.admin import committed_offsets, ensure_topics
from streamimg.faults import POINTS
from streamimg.sources.video import SourceFrame, produce_frames, read_video
from tests.harness.checker import check_exactly_once
from tests.harness.paced import PacedStream
from tests.harness.procs import DaskProcesses
from tests.helpers import (
    clip,
    slow_topology,
    start_daemon,
    stop_process,
    wait_until,
    write_topology,
)

CHAOS = os.environ.get("STREAMIMG_CHAOS") == "1"
BODY = (".gaussian_blur(sigma=2.0).palette(k=4)"
        ".to_kafka_frames(encoding='jpeg').to_kafka_analytics()")


def produce_input(kafka, topic, per_partition):
    """``per_partition`` frames of bikes.mp4 (640x272) into each of 2 partitions."""
    ensure_topics(kafka, [topic], partitions=2)
    frames = [f.image for f in read_video(clip("bikes.mp4"), limit=min(per_partition, 60))]
    ends = {}
    for p, stream in enumerate(("left", "right")):
        ends.update(produce_frames(
            kafka, topic, (SourceFrame(i, i, frames[i % len(frames)])
                           for i in range(per_partition)), stream=stream, partition=p))
    return {(topic, p): end for p, end in ends.items()}


def committed(kafka, group, topic):
    return sum(max(0, o) for o in committed_offsets(kafka, group, [topic]).values())


def assert_exactly_once(kafka, name, inputs):
    report = check_exactly_once(kafka.bootstrap, inputs=inputs,
                                outputs=[f"{name}.frames", f"{name}.analytics"],
                                dlq=f"{name}.dlq", group=name)
    assert report.ok, report.summary()
    return report


@pytest.mark.timeout(900 if CHAOS else 420)

def test_daemon_killed_at_crash_points_and_at_random_keeps_exactly_once(kafka, cluster, tmp_path,
                                                                         uid):
    topic, name = f"in-{uid}", f"kill-{uid}"
    inputs = produce_input(kafka, topic, 150 if CHAOS else 60)
    total = sum(inputs.values())
    path = write_topology(tmp_path / "t.py", name, topic, BODY, max_frames=2, max_wait_ms=20,
                          max_in_flight=3)
    log = tmp_path / "daemon.log"
    rng = random.Random(7)
    kills = 0
    # Each crash point, at the 2nd transaction of a run: the process kills itself there.
    for point in POINTS:
        proc = start_daemon(path, kafka, cluster, log,
                            env={"STREAMIMG_CRASH_AT": f"{point}:2"})
        try:
            code = proc.wait(timeout=120)
        finally:
            stop_process(proc, signal.SIGKILL)
        assert code == -signal.SIGKILL, f"{point}: exit {code}\n{log.read_text()[-3000:]}"
        kills += 1
    # Random kills while the stream runs (group join, mid-batch, mid-commit alike).
    for _ in range(6 if CHAOS else 2):
        before = committed(kafka, name, topic)
        if before >= total - 10:
            break
        proc = start_daemon(path, kafka, cluster, log)
        try:
            time.sleep(rng.uniform(0.5, 6.0))
        finally:
            stop_process(proc, signal.SIGKILL)
        kills += 1
    assert committed(kafka, name, topic) < total, "the input ran out before the last run"
    final = start_daemon(path, kafka, cluster, log)
    try:
        wait_until(lambda: committed(kafka, name, topic) >= total, 240, "the final run commits")
    finally:
        assert stop_process(final, signal.SIGTERM) == 0, log.read_text()[-3000:]
    assert kills >= (10 if CHAOS else 6)
    report = assert_exactly_once(kafka, name, inputs)
    # The kills really left aborted or open transactions behind (else the test proves little).
    assert report.counts[f"{name}.frames"].get("aborted", 0) > 0, report.counts


def kill_workers_while_running(kafka, tmp_path, path, log, name, topic, total, kills):
    """Run the topology on a `dask scheduler` with 2 `dask worker` processes, SIGKILL a
    worker ``kills`` times (each replaced at once, progress awaited), then wait until
    ``total`` input frames are committed and stop the daemon with SIGTERM (exit 0)."""
    with DaskProcesses(tmp_path, n_workers=2) as dask:
        proc = start_daemon(path, kafka, None, log, scheduler=dask.address)
        try:
            wait_until(lambda: committed(kafka, name, topic) >= 4, 120, "first commits")
            for k in range(kills):
                done = committed(kafka, name, topic)
                dask.kill_worker(k)
                dask.start_worker()
                wait_until(lambda d=done: committed(kafka, name, topic) > d + 4, 120,
                           "progress after a worker kill")
                assert proc.poll() is None, log.read_text()[-3000:]
            wait_until(lambda: committed(kafka, name, topic) >= total, 240, "all committed")
        finally:
            assert stop_process(proc, signal.SIGTERM) == 0, log.read_text()[-3000:]


@pytest.mark.timeout(600 if CHAOS else 300)
def test_killed_dask_workers_lose_no_frame_and_the_daemon_goes_on(kafka, tmp_path, uid):
    topic, name = f"in-{uid}", f"wk-{uid}"
    inputs = produce_input(kafka, topic, 120 if CHAOS else 48)
    total = sum(inputs.values())
    # A slow operator keeps chunks running when a worker dies.
    path = slow_topology(tmp_path / "t.py", name, topic, BODY, 0.05)
    log = tmp_path / "daemon.log"
    kill_workers_while_running(kafka, tmp_path, path, log, name, topic, total, 5 if CHAOS else 2)
    text = log.read_text()
    assert not re.search(r"dead letter \S+\[\d+\]@\d+", text), text[-3000:]
    assert '"dead_letters": 0' in text, text[-3000:]
    assert_exactly_once(kafka, name, inputs)


@pytest.mark.skipif(not CHAOS, reason="make chaos only: ~45 s, 2 worker kills (the suite "
                    "kills workers under a stateless topology; tests/test_state.py kills daemons "
                    "under a stateful one)")
@pytest.mark.timeout(600)
def test_killed_dask_workers_under_stateful_operators_rewind_to_the_committed_state(
        kafka, tmp_path, uid):
    """A lost chunk or state task of a stateful program is not resubmitted: the daemon
    rewinds to the committed offsets and state. Every frame's chained value (it depends on
    every earlier frame of its stream) must still equal one uninterrupted pass."""
    from tests.harness.checker import read_log
    from tests.test_state import CHAIN_SOURCE, expected_chain

    topic, name = f"in-{uid}", f"wks-{uid}"
    inputs = produce_input(kafka, topic, 48)
    total = sum(inputs.values())
    path = slow_topology(tmp_path / "t.py", name, topic,
                         ".analyze('mean', lambda f: float(f.mean()))"
                         ".stateful('chain', Chain())" + BODY, 0.05)
    path.write_text(CHAIN_SOURCE + path.read_text())
    log = tmp_path / "daemon.log"
    kill_workers_while_running(kafka, tmp_path, path, log, name, topic, total, 2)
    assert_exactly_once(kafka, name, inputs)
    frames = [f.image for f in read_video(clip("bikes.mp4"), limit=48)]
    means = [float(frames[i % len(frames)].mean()) for i in range(48)]
    got = {}
    for r in read_log(kafka.bootstrap, f"{name}.analytics"):
        if r.outcome == "committed":
            a = json.loads(r.value)
            got[(a["stream"], a["frame"])] = a["chain"]
    for stream in ("left", "right"):
        assert [got[(stream, i)] for i in range(48)] == expected_chain(means), stream


# -- two daemons in one group, one of them killed and restarted while frames stream in ----------

ASSIGNED = re.compile(r"assigned \[\('")
REBALANCE = re.compile(r"streamimg\.daemon: (assigned|revoking|lost) (\[.*\])$")


def assignment(log):
    """The partitions a daemon run owns now, from its log's incremental assign/revoke lines."""
    owned = set()
    for line in (log.read_text() if log.exists() else "").splitlines():
        m = REBALANCE.search(line)
        if m:
            parts = set(ast.literal_eval(m.group(2)))
            owned = owned | parts if m.group(1) == "assigned" else owned - parts
    return owned


def stats_of(path):
    """The counters a daemon run wrote to its ``--stats-file`` (written atomically), or {}."""
    return json.loads(path.read_text()) if path.exists() else {}


@pytest.mark.timeout(480)
def test_two_daemons_in_one_group_one_killed_three_times_keep_exactly_once(
        kafka, cluster, bikes, tmp_path, uid):
    """Instances 0 and 1 of one topology share the group (and the input's 2 partitions);
    instance 1 is SIGKILLed 3 times while frames stream in (right after it got partitions,
    right after a commit with more work coming, and at the ``before_commit`` crash point
    with its offsets sent to an open transaction) and restarted with the same id each time
    (which fences its zombie and aborts the open transaction; on the embedded broker nothing
    else ends it). Partitions move between the two on every join and every expired session;
    after the last two kills instance 0 takes the dead member's partition over (its session
    expires) before the restart, so it works on it while the zombie's transaction is open."""
    topic, name = f"in-{uid}", f"pair-{uid}"
    ensure_topics(kafka, [topic], partitions=2)
    images = [np.ascontiguousarray(b[:48, :64]) for b in bikes]
    # A slow operator (40 ms a frame) keeps batches computing when a kill or a revoke comes.
    path = slow_topology(tmp_path / "t.py", name, topic, BODY, 0.04)
    procs = []

    def start(instance, run, env=None):
        """Run ``run`` of ``instance``: its own log and stats file."""
        log, stats = tmp_path / f"d{instance}-{run}.log", tmp_path / f"d{instance}-{run}.json"
        proc = start_daemon(path, kafka, cluster, log, instance=instance, env=env,
                            extra=["--stats-file", str(stats)])
        procs.append(proc)
        return proc, log, stats

    def tail(log):
        return f"{log.name}:\n{log.read_text()[-3000:]}" if log.exists() else f"{log.name}: -"

    def commits(stats, n):
        return stats_of(stats).get("frames_out", 0) >= n

    stream = PacedStream(kafka, topic, images)
    try:
        d0, log0, stats0 = start("0", 0)
        # Instance 0 (the group leader from here on) owns both partitions and commits first.
        wait_until(lambda: commits(stats0, 4), 120, "instance 0 commits")
        moments = ("right after it got partitions", "right after a commit, more work coming",
                   "at before_commit:2, offsets sent to the open transaction")
        for run, moment in enumerate(moments):
            env = {"STREAMIMG_CRASH_AT": "before_commit:2"} if run == 2 else None
            d1, log1, stats1 = start("1", run, env)
            if run == 0:
                wait_until(lambda log=log1: ASSIGNED.search(log.read_text()), 120,
                           f"instance 1 run {run} to get partitions", interval_s=0.02)
                d1.send_signal(signal.SIGKILL)
            elif run == 1:
                wait_until(lambda s=stats1: commits(s, 4), 120,
                           f"instance 1 run {run} commits", interval_s=0.02)
                d1.send_signal(signal.SIGKILL)
            try:  # run 2 kills itself with SIGKILL at the crash point
                code = d1.wait(timeout=120)
            except subprocess.TimeoutExpired:
                pytest.fail(f"instance 1 run {run} ({moment}) did not die\n{tail(log1)}")
            assert code == -signal.SIGKILL, f"run {run} ({moment}): exit {code}\n{tail(log1)}"
            if run > 0:
                # Instance 0 takes the dead member's partition over once its session expires,
                # while the zombie's transaction (records, maybe offsets) is still open.
                wait_until(lambda: len(assignment(log0)) == 2, 60,
                           f"instance 0 to take over after run {run}", interval_s=0.05)
            assert d0.poll() is None, f"instance 0 exited {d0.returncode}\n{tail(log0)}"
        # Instance 1 again, same id: fences the last zombie, rejoins and commits.
        d1, log1, stats1 = start("1", len(moments))
        wait_until(lambda: commits(stats1, 4), 120, "the restarted instance 1 commits")
        ends = stream.stop()
        assert sorted(ends) == [0, 1], ends
        inputs = {(topic, p): end for p, end in ends.items()}
        wait_until(lambda: committed_offsets(kafka, name, [topic]) == inputs, 180,
                   f"the group to commit {inputs}", interval_s=0.5)
        assert d0.poll() is None, f"instance 0 exited {d0.returncode}\n{tail(log0)}"
        assert stop_process(d1, signal.SIGTERM) == 0, tail(log1)
        assert stop_process(d0, signal.SIGTERM) == 0, tail(log0)
    finally:
        for proc in procs:  # no-op for the ones that exited
            stop_process(proc, signal.SIGKILL)
        stream.stop()
    report = assert_exactly_once(kafka, name, inputs)
    assert report.good_inputs == sum(ends.values()), report.summary()
    # The kills really left a transaction to abort, and partitions really moved.
    assert report.counts[f"{name}.frames"].get("aborted", 0) > 0, report.counts
    assert "revoking" in log0.read_text(), tail(log0)


@pytest.mark.skipif(not CHAOS, reason="make chaos only: ~2.5 min, 6 kills (the suite keeps the "
                                        "two-daemon scenario)")
@pytest.mark.timeout(900)
def test_three_daemons_in_one_group_killed_in_turn_keep_exactly_once(kafka, cluster, bikes,
                                                                      tmp_path, uid):
    """Instances 0, 1 and 2 share the group and a 3-partition input while frames stream in;
    instances 1 and 2 are SIGKILLed in turn (at a seeded moment after they got partitions, or
    at a crash point with a transaction open), each restarted at once with the same id (which
    fences its zombie: see the README on Tansu's frozen offsets). Every kill and every join
    moves partitions between three members; instance 0, the group leader, stays up (on the
    embedded broker a group whose leader leaves mid-rebalance can stay stuck).

    Sessions last 10 s here, so a restarted instance fences its zombie before the dead
    member's partitions move: on the embedded broker a zombie's open transaction freezes
    the offsets every member reads (README, "The embedded broker"). With 2 s sessions, 2 of
    4 runs had 4-20 frames committed twice: a third member took a partition over in that
    window and read its offset from before the last commit of the member that had owned it.
    Apache Kafka holds such reads back instead (KIP-447)."""
    topic, name = f"in-{uid}", f"trio-{uid}"
    ensure_topics(kafka, [topic], partitions=3)
    images = [np.ascontiguousarray(b[:48, :64]) for b in bikes]
    path = slow_topology(tmp_path / "t.py", name, topic, BODY, 0.04)
    rng = random.Random(11)
    procs, runs = [], {"1": 0, "2": 0}

    def start(instance, env=None):
        run = runs.get(instance, 0)
        runs[instance] = run + 1
        log = tmp_path / f"d{instance}-{run}.log"
        proc = start_daemon(path, kafka, cluster, log, instance=instance, env=env,
                            settings={"session.timeout.ms": "10000"})
        procs.append(proc)
        return proc, log

    def tail(log):
        return f"{log.name}:\n{log.read_text()[-3000:]}" if log.exists() else f"{log.name}: -"

    stream = PacedStream(kafka, topic, images, partitions=3)
    try:
        d0, log0 = start("0")
        wait_until(lambda: committed(kafka, name, topic) >= 4, 120, "instance 0 commits")
        members = {i: start(i) for i in ("1", "2")}
        for instance, (_, log) in members.items():
            wait_until(lambda log=log: assignment(log), 120, f"instance {instance} partitions")
        for k in range(6):
            instance = "1" if k % 2 == 0 else "2"
            proc, log = members[instance]
            if k % 4 in (1, 2):  # at a crash point: its next run kills itself mid-transaction
                proc.send_signal(signal.SIGKILL)
                proc.wait(timeout=30)
                point = rng.choice(("after_produce", "before_commit"))
                proc, log = start(instance, {"STREAMIMG_CRASH_AT": f"{point}:2"})
                try:
                    code = proc.wait(timeout=120)
                except subprocess.TimeoutExpired:
                    pytest.fail(f"instance {instance} did not reach {point}\n{tail(log)}")
            else:
                wait_until(lambda log=log: assignment(log), 120,
                           f"instance {instance} to own partitions before kill {k}")
                time.sleep(rng.uniform(0.2, 3.0))
                proc.send_signal(signal.SIGKILL)
                code = proc.wait(timeout=30)
            assert code == -signal.SIGKILL, f"kill {k}: exit {code}\n{tail(log)}"
            members[instance] = start(instance)  # at once: fences the zombie
            assert d0.poll() is None, f"instance 0 exited {d0.returncode}\n{tail(log0)}"
        for instance, (_, log) in members.items():
            wait_until(lambda log=log: assignment(log), 120,
                       f"the last run of instance {instance} to own partitions")
        ends = stream.stop()
        inputs = {(topic, p): end for p, end in ends.items()}
        assert len(inputs) == 3, inputs
        wait_until(lambda: committed_offsets(kafka, name, [topic]) == inputs, 180,
                   f"the group to commit {inputs}", interval_s=0.5)
        for proc, log in members.values():
            assert stop_process(proc, signal.SIGTERM) == 0, tail(log)
        assert stop_process(d0, signal.SIGTERM) == 0, tail(log0)
    finally:
        for proc in procs:
            stop_process(proc, signal.SIGKILL)
        stream.stop()
    report = assert_exactly_once(kafka, name, inputs)
    assert report.good_inputs == sum(ends.values()), report.summary()
    assert report.counts[f"{name}.frames"].get("aborted", 0) > 0, report.counts
    assert "revoking" in log0.read_text(), tail(log0)  # partitions really moved
    print(f"3 daemons, 6 kills: {report.good_inputs} frames, {report.counts}")
