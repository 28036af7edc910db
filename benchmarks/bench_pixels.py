"""Pixels/s through streamimg's pixel path against the seed's design in plain Python.

Usage: python benchmarks/bench_pixels.py [--quick] [--out PATH] [--no-variants]

The issue: "Pixels per second through the pixel path versus the seed's design (each pixel
expanded to its neighbours, grouped by coordinate and summed) written in plain Python on the
same frames, measured in one run."

Input: scikit-image's cameraman (512x512 grey, a real photograph) resized to 256x256
(64x64 with ``--quick``) and sent as F frames (4; 2 with ``--quick``; frame i is the image
rotated by i quarter turns) of text pixel messages ``name;frame;x;y;v`` keyed by name, to an
input topic of an embedded broker.

(a) streamimg: ``topologies/pixel_convolution.py`` (copied with topics of its own, as
    ``tests/test_pixels.py`` does; ``PIXEL_FRAME_SIZE`` set) run by ``streamimg.daemon.Daemon``
    in a thread on ``streamimg.cluster.local_cluster()`` (2 workers x 1 thread). It consumes every
    pixel, assembles frames, computes a 3x3 box blur and an 11x11 LoG (sigma 1.4) with wrap
    boundary, and produces 2 pixel records per input pixel, exactly-once (transactions).
    Rate = input pixels / (daemon start -> the commit that moves the group's committed offset
    to the end of the input), also from partition assignment, and steady (first commit ->
    last commit). The daemon is observed only through its public ``Listener`` hook (partition
    assignment, each batch's submit ms, each transaction's outcome, ms and committed input
    offsets, from ``Outcome.batch.offsets``) and by sampling CPU time from outside: the poll
    thread's (also read with ``time.thread_time()`` inside the listener, which runs on it),
    the committer thread's, and per process. Commit times are when the poll thread reports
    the outcome (up to ~0.1 s after the transaction ends). Worker time per Dask task prefix:
    one ``streamimg.worker.run_chunk`` task per chunk of a batch (one chunk per worker thread).
(b) the seed's design in plain Python, in memory (no Kafka: this flatters the seed): parse
    each record with ``split(';')``, expand each pixel to its (2h+1)(2w+1) neighbours with
    weighted values (periodic boundary), group by (name, frame, x, y) in a dict and sum, for
    the blur and for the LoG as the seed's job did, then format the output records as text.
    (``bench_convolve.seed_convolution`` runs the same expand/group/sum on arrays, without the
    parsing and the output records, so the record-level job is written here.)

Checks: (a)'s outputs (every frame) equal (b)'s and ``scipy.ndimage.convolve(mode="wrap")``
to 1e-9; each output pixel exactly once; committed offset at the end; no dead letters.

Stage micro-benchmarks (same frames, same process) show where (a)'s time goes. One more
daemon run, (a'), uses binary pixel records in and out. ``--no-variants`` skips both.
(An earlier run of this benchmark found that ``distributed`` shipped each frame's list of
output records as one message frame per record, 665 us per pixel; a chunk's records now
travel as one pickled ``ChunkResult``.)
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import pickle
import platform
import sys
import tempfile
import threading
import time
import uuid
from contextlib import ExitStack
from pathlib import Path

import confluent_kafka
import dask
import distributed
import numpy as np
import psutil
import scipy
import scipy.ndimage as ndi
import skimage
import skimage.data
import skimage.transform
from confluent_kafka import Consumer, KafkaError, Producer
from distributed import Client

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import CpuMeter, by_transaction, log, thread_cpu_s  # noqa: E402

import streamimg  # noqa: E402
from streamimg.admin import committed_offsets, ensure_topics, read_topic  # noqa: E402
from streamimg.assembly import PixelAssembler, PixelFrames  # noqa: E402
from streamimg.batching import FrameInfo  # noqa: E402
from streamimg.broker import EmbeddedBroker  # noqa: E402
from streamimg.cluster import local_cluster  # noqa: E402
from streamimg.codecs.frame import FrameHeader  # noqa: E402
from streamimg.codecs.pixel import decode_pixel  # noqa: E402
from streamimg.codecs.pixel_frames import frame_to_pixels  # noqa: E402
from streamimg.config import KafkaConfig  # noqa: E402
from streamimg.daemon import Daemon, Listener  # noqa: E402
from streamimg.operators import kernels  # noqa: E402
from streamimg.sinks.records import lineage_headers, pixel_records  # noqa: E402
from streamimg.topology import Topology, load_topology  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
NAME = "camera"
WAIT_LIMIT_S = 600.0
TOL = 1e-9
KERNELS = (("blur", kernels.box(3)), ("log", kernels.laplacian_of_gaussian(1.4, 11)))
BIG_QUEUE = {"queue.buffering.max.messages": 2_000_000,
             "queue.buffering.max.kbytes": 2_097_151}


def camera_frames(size, n):
    """The cameraman, resized to size x size, grey 0-255 (rounded) float64; frame i rotated."""
    img = skimage.transform.resize(skimage.data.camera(), (size, size), anti_aliasing=True)
    img = np.round(img * 255.0)
    return [np.ascontiguousarray(np.rot90(img if (i // 4) % 2 == 0 else img[::-1], i % 4))
            for i in range(n)]


def input_records(frames, binary=False):
    return [r for i, f in enumerate(frames) for r in frame_to_pixels(NAME, i, f, binary=binary)]


# -- (b) the seed's design in plain Python -----------------------------------------------------


def seed_job(records, height, width):
    """Parse, expand/group/sum for each kernel (periodic boundary), format; timed by stage.

    Pixel q contributes ``k[d] * v(q)`` to pixel ``q + d``: a convolution (the seed's expand
    wrote ``x - dx``, a correlation; identical for these symmetric kernels).
    """
    times = {}
    t0 = time.perf_counter()
    pixels = []
    append = pixels.append
    for s in records:
        name, frame, x, y, v = s.decode().split(";")
        append((name, int(frame), int(x), int(y), float(v)))
    times["parse"] = time.perf_counter() - t0
    outputs = {}
    for label, k in KERNELS:
        t0 = time.perf_counter()
        hh, hw = k.shape[0] // 2, k.shape[1] // 2
        taps = [(dx, dy, float(k[hh + dy, hw + dx]))
                for dy in range(-hh, hh + 1) for dx in range(-hw, hw + 1)]
        acc = {}
        get = acc.get
        for name, frame, x, y, v in pixels:
            for dx, dy, w in taps:  # expand: one weighted copy per neighbour
                key = (name, frame, (x + dx) % width, (y + dy) % height)
                acc[key] = get(key, 0.0) + v * w  # group by coordinate + reduce (sum)
        t1 = time.perf_counter()
        outputs[label] = [f"{n};{f};{x};{y};{v!r}".encode() for (n, f, x, y), v in acc.items()]
        times[f"expand_group_sum_{label}"] = t1 - t0
        times[f"format_{label}"] = time.perf_counter() - t1
    return outputs, times


def run_seed(records, height, width):
    t0 = time.perf_counter()
    outputs, times = seed_job(records, height, width)
    wall = time.perf_counter() - t0
    n = len(records)
    return outputs, {
        "pixels": n, "wall_s": round(wall, 3), "pixels_per_s": round(n / wall, 1),
        "output_records": sum(len(v) for v in outputs.values()),
        "stage_s": {k: round(v, 3) for k, v in times.items()},
        "us_per_pixel": {k: round(v * 1e6 / n, 3) for k, v in times.items()},
    }


# -- (a) the streamimg daemon --------------------------------------------------------------------


class PixelTimeline(Listener):
    """The daemon's events, through its public listener hook only (nothing patched).

    Every Listener method runs on the daemon's poll thread, so ``time.thread_time()`` read
    there is that thread's CPU time: the poll thread's CPU at each event comes for free.
    Commit times are when the poll thread reports the outcome (its loop waits at most
    ~0.1 s in ``consume``), so they can trail the transaction's real end by that much.
    """

    def __init__(self, input_topic):
        self.input_topic = input_topic
        self.outcomes = []  # committed Outcomes
        self.t_assign = None
        self.cpu_assign = None
        self.submits = []  # dicts: t (start), ms, frames, nbytes, cpu (poll thread, s)
        self.commits = []  # dicts: t (seen), txn_ms, offset (input), frames, dead, records,
        #                    latency_s (batch closed -> outcome seen), cpu (poll thread, s)
        self.others = []   # (t, status, error) of outcomes that are not commits

    def assigned(self, partitions):
        if self.t_assign is None:
            self.t_assign, self.cpu_assign = time.perf_counter(), time.thread_time()

    def submitted(self, seq, frames, nbytes, ms):
        self.submits.append({"t": time.perf_counter() - ms / 1e3, "ms": ms, "frames": frames,
                             "nbytes": nbytes, "cpu": time.thread_time()})

    def outcome(self, outcome):
        now, wall = time.perf_counter(), time.time()
        b = outcome.batch
        if outcome.status != "committed":
            self.others.append((now, outcome.status, outcome.error))
            return
        offset = max((o for (t, _), o in b.offsets.items() if t == self.input_topic),
                     default=-1)
        self.outcomes.append(outcome)
        self.commits.append({"t": now, "txn_ms": outcome.ms, "offset": offset,
                             "frames": b.frames, "dead": len(b.dead), "records": len(b.records),
                             "latency_s": wall - b.created if b.created else float("nan"),
                             "cpu": time.thread_time()})

    def end_commit(self, n_pixels):
        """The first commit whose input offset reaches ``n_pixels``, or None."""
        return next((c for c in list(self.commits) if c["offset"] >= n_pixels), None)




def committer_threads():
    """Native ids of the live committer threads (sampled from outside, by thread name)."""
    return {t.native_id for t in threading.enumerate() if t.name == "streamimg-committer"}


def scheduler_prefixes(client):
    def collect(dask_scheduler):
        return {name: {"tasks": int(tp.state_counts.get("processing", 0)),
                       "compute_s": float(tp.all_durations.get("compute", 0.0))}
                for name, tp in dask_scheduler.task_prefixes.items()}
    return client.run_on_scheduler(collect)


def prefixes_delta(before, after, frames):
    out = {}
    for name, a in after.items():
        b = before.get(name, {"tasks": 0, "compute_s": 0.0})
        tasks, comp = a["tasks"] - b["tasks"], a["compute_s"] - b["compute_s"]
        if tasks:
            out[name] = {"tasks": tasks, "tasks_per_frame": round(tasks / frames, 3),
                         "compute_s": round(comp, 3),
                         "compute_ms_per_frame": round(comp * 1e3 / frames, 2)}
    return dict(sorted(out.items(), key=lambda kv: -kv[1]["compute_s"]))


def cpu_delta(before, after, wall_s, pixels):
    """Two CpuMeter samples as CPU seconds and us per input pixel, per process group."""
    out = {}
    for name in ("main", "broker", "workers"):
        cpu = sum(after[name][:2]) - sum(before[name][:2])
        out[name] = {"cpu_s": round(cpu, 3), "cores_busy": round(cpu / wall_s, 2),
                     "us_per_input_pixel": round(cpu * 1e6 / pixels, 2)}
    return out


def file_topology(tmp, uid, input_topic):
    """topologies/pixel_convolution.py with topics and group of its own (as the tests do)."""
    src = (ROOT / "topologies" / "pixel_convolution.py").read_text()
    path = Path(tmp) / f"pixel_convolution_{uid}.py"
    path.write_text(src.replace('"pixel_convolution', f'"pc-{uid}').replace(
        'inputs="pixels"', f'inputs="{input_topic}"'))
    return load_topology(path)


def code_topology(uid, input_topic, size, binary_out):
    """The same pipeline as the file, built in code (for the binary-records variant)."""
    src = (ROOT / "topologies" / "pixel_convolution.py").read_text()
    for needle in ("max_frames=4, max_wait_ms=100", "window_ms=10_000",
                   'kernels.box(3), boundary="wrap"',
                   'kernels.laplacian_of_gaussian(1.4, 11), boundary="wrap"'):
        if needle not in src:
            raise RuntimeError(f"topologies/pixel_convolution.py changed ({needle!r} missing); "
                               "update code_topology() to match it")
    topology = Topology(f"pc-{uid}", inputs=input_topic, max_frames=4, max_wait_ms=100,
                        pixels=PixelFrames(height=size, width=size, window_ms=10_000))
    frames = topology.source
    frames.convolve(kernels.box(3), boundary="wrap").to_kafka_pixels(
        f"pc-{uid}.blur", binary=binary_out)
    frames.convolve(kernels.laplacian_of_gaussian(1.4, 11), boundary="wrap").to_kafka_pixels(
        f"pc-{uid}.log", binary=binary_out)
    return topology


def produce_input(kafka, topic, records):
    ensure_topics(kafka, [topic])
    producer = Producer({**kafka.producer(), "enable.idempotence": True, "linger.ms": 20})
    key = NAME.encode()
    t0 = time.perf_counter()
    for value in records:
        while True:
            try:
                producer.produce(topic, value=value, key=key)
                break
            except BufferError:
                producer.poll(0.05)
    left = producer.flush(120)
    if left:
        raise RuntimeError(f"{left} input records undelivered")
    return time.perf_counter() - t0


def run_streamimg(kafka, client, cpu, tmp, input_topic, n_pixels, n_frames, size,
                  variant=None):
    """Run the daemon until a commit moves the input offset to the end; variant None: the file."""
    uid = uuid.uuid4().hex[:8]
    if variant is None:
        topology = file_topology(tmp, uid, input_topic)
    else:
        topology = code_topology(uid, input_topic, size, binary_out=variant == "binary")
    group = topology.name
    timeline = PixelTimeline(input_topic)
    daemon = Daemon(topology, kafka, client, drain_timeout_s=60, listeners=[timeline])
    outcome = {}
    before_prefixes, before_cpu = scheduler_prefixes(client), cpu.sample()
    old_committers = committer_threads()
    t_start = time.perf_counter()
    thread = threading.Thread(target=lambda: outcome.setdefault("code", daemon.run()),
                              name="streamimg-daemon", daemon=True)
    thread.start()
    try:
        while (end := timeline.end_commit(n_pixels)) is None:
            if not thread.is_alive():
                raise RuntimeError(f"the daemon stopped early: {outcome}")
            if time.perf_counter() - t_start > WAIT_LIMIT_S:
                raise TimeoutError(f"not all {n_pixels} pixels committed in {WAIT_LIMIT_S} s")
            time.sleep(0.01)
        t_seen = time.perf_counter()
        poll_cpu = thread_cpu_s(thread.native_id)
        committers = committer_threads() - old_committers
        committer_cpu = sum(thread_cpu_s(i) for i in committers) if committers else float("nan")
        after_cpu, after_prefixes = cpu.sample(), scheduler_prefixes(client)
        committed = committed_offsets(kafka, group, [input_topic]).get((input_topic, 0), -1)
    finally:
        daemon.stop()
        thread.join(120)
    if thread.is_alive():
        raise RuntimeError("the daemon did not stop within 120 s")
    t_end, t_assign = end["t"], timeline.t_assign
    commits = [c for c in timeline.commits if c["t"] <= t_end]
    submits = [s for s in timeline.submits if s["t"] <= t_end]
    first = commits[0]
    batches = len(commits)
    wall = t_end - t_start
    from_assign = t_end - t_assign
    stats = daemon.stats.to_dict()
    submit_s = sum(s["ms"] for s in submits) / 1e3
    txns = by_transaction(timeline.outcomes)
    txn_s = sum(ms for ms in txns.values()) / 1e3  # each transaction once
    poll_cpu_run = end["cpu"] - timeline.cpu_assign
    # Poll-thread CPU between submits: consume + assembly (batcher.add/take) + hand-over of
    # finished batches (gather, records) + outcomes; the listener cannot split these further.
    threads = {
        "poll thread CPU, daemon start -> assignment (check, init_transactions, join)":
            timeline.cpu_assign,
        "poll thread CPU, assignment -> end commit (consume, assembly, submit, gather, records)":
            poll_cpu_run,
        "  of which submit (wall, sum of Listener.submitted ms)": submit_s,
        "committer thread CPU, whole run (produce loop + transactional calls)": committer_cpu,
        "transactions (wall, sum over transactions of Outcome.ms)": txn_s,
        "wall, assignment -> end commit": from_assign,
    }
    result = {
        "pixels": n_pixels, "frames": n_frames, "batches": batches,
        "transactions": len(txns),
        "variant": variant or "topologies/pixel_convolution.py", "exit_code": outcome.get("code"),
        "from_start_s": round(wall, 3),
        "pixels_per_s": round(n_pixels / wall, 1),
        "frames_per_s": round(n_frames / wall, 3),
        "from_assign_s": round(from_assign, 3),
        "pixels_per_s_from_assign": round(n_pixels / from_assign, 1),
        "frames_per_s_from_assign": round(n_frames / from_assign, 3),
        "steady_pixels_per_s": round((n_pixels - first["offset"]) / (t_end - first["t"]), 1)
        if batches > 1 and t_end > first["t"] else None,
        "startup_s": {"group_join": round(t_assign - t_start, 3),
                      "assign_to_first_commit": round(first["t"] - t_assign, 3)},
        "first_commit_pixels": first["offset"],
        "first_commit_frames": first["frames"],
        "end_seen_by_main_s": round(t_seen - t_end, 3),
        "committed_offset_after": committed,
        "other_outcomes": [[round(t - t_start, 3), s, e] for t, s, e in timeline.others],
        "ms_per_batch": {
            "submit (poll thread)": round(submit_s * 1e3 / max(1, len(submits)), 2),
            "transaction (committer thread)": round(txn_s * 1e3 / batches, 2),
            "transaction, per transaction": round(txn_s * 1e3 / len(txns), 2),
            "batch closed -> commit seen (latency)": round(
                sum(c["latency_s"] for c in commits) * 1e3 / batches, 1),
        },
        "threads_s": {k: round(v, 3) for k, v in threads.items()},
        "threads_us_per_input_pixel": {k: round(v * 1e6 / n_pixels, 3)
                                       for k, v in threads.items()},
        "poll_thread_busy_fraction": round(poll_cpu_run / from_assign, 3),
        "poll_thread_cpu_s": round(poll_cpu, 3),
        "committer_thread_cpu_s": round(committer_cpu, 3),
        "daemon_stats": {**stats,
                         "commit_ms_per_batch": round(stats["commit_ms"] / max(1, batches), 2)},
        "dask_prefixes": prefixes_delta(before_prefixes, after_prefixes, n_frames),
        "cpu": cpu_delta(before_cpu, after_cpu, wall, n_pixels),
        "timeline": {  # seconds from daemon start; durations in ms
            "submits": [[round(s["t"] - t_start, 3), round(s["ms"], 1), s["frames"],
                         s["nbytes"]] for s in submits],
            "commits": [[round(c["t"] - t_start, 3), round(c["txn_ms"], 1), c["offset"],
                         c["frames"], c["records"]] for c in commits]},
    }
    return result, topology


def read_outputs(kafka, topology, n_frames, shape):
    """Every output frame of both sinks as arrays (NaN where missing), duplicates counted."""
    out, dup, counts = {}, 0, {}
    for label in ("blur", "log"):
        msgs = read_topic(kafka, f"{topology.name}.{label}", timeout_s=300)
        counts[label] = len(msgs)
        arrs = np.full((n_frames, *shape), np.nan)
        for m in msgs:
            px = decode_pixel(m.value())
            if not np.isnan(arrs[px.frame, px.y, px.x]):
                dup += 1
            arrs[px.frame, px.y, px.x] = px.v
        out[label] = arrs
    dlq = len(read_topic(kafka, topology.dlq_topic, timeout_s=60))
    return out, {"records": counts, "duplicates": dup, "dead_letters": dlq}


def seed_arrays(outputs, n_frames, shape):
    out = {}
    for label, recs in outputs.items():
        arrs = np.full((n_frames, *shape), np.nan)
        for r in recs:
            name, f, x, y, v = r.decode().split(";")
            arrs[int(f), int(y), int(x)] = float(v)
        out[label] = arrs
    return out


def verify(a_out, b_out, frames):
    """Max abs differences (a vs b, a vs scipy, b vs scipy) per kernel over every frame."""
    res = {}
    for label, k in KERNELS:
        ref = np.stack([ndi.convolve(f, k, mode="wrap") for f in frames])
        res[label] = {"a_vs_b": float(np.nanmax(np.abs(a_out[label] - b_out[label]))),
                      "a_vs_scipy": float(np.nanmax(np.abs(a_out[label] - ref))),
                      "b_vs_scipy": float(np.nanmax(np.abs(b_out[label] - ref))),
                      "a_missing": int(np.isnan(a_out[label]).sum()),
                      "b_missing": int(np.isnan(b_out[label]).sum())}
        res[label]["ok"] = (max(res[label]["a_vs_b"], res[label]["a_vs_scipy"],
                                res[label]["b_vs_scipy"]) <= TOL
                            and res[label]["a_missing"] == res[label]["b_missing"] == 0)
    return res


def warm():
    frame = ndi.convolve(np.ones((16, 16)), KERNELS[1][1], mode="wrap")[:, :, None]
    info = FrameInfo("warm", 0, 0, NAME.encode(),
                     FrameHeader(NAME, 0, 0, 16, 16, 1, "float64", "raw", "GRAY"))
    return len(pixel_records(frame, info)) + len(pixel_records(frame, info, binary=True))


# -- stage micro-benchmarks ----------------------------------------------------------------------


class FakeMessage:
    """Enough of confluent_kafka.Message for PixelAssembler.add (same calls it makes)."""

    __slots__ = ("_v", "_o")

    def __init__(self, value, offset):
        self._v, self._o = value, offset

    def topic(self):
        return "in"

    def partition(self):
        return 0

    def offset(self):
        return self._o

    def value(self):
        return self._v

    def timestamp(self):
        return (1, 0)

    def key(self):
        return NAME.encode()

    def headers(self):
        return None


def timed(fn, repeat=1):
    best = float("inf")
    out = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def bulk_decode_text(values):
    """Prototype: decode a whole poll of text records with NumPy (no per-record Python)."""
    parts = np.array(b";".join(values).split(b";")).reshape(-1, 5)
    return (parts[:, 1].astype(np.int64), parts[:, 2].astype(np.int64),
            parts[:, 3].astype(np.int64), parts[:, 4].astype(np.float64))


def bulk_decode_binary(values):
    n = len(NAME.encode())
    rec = np.dtype([("magic", "u1"), ("version", "u1"), ("n", ">u2"), ("name", f"V{n}"),
                    ("frame", ">u4"), ("x", ">u4"), ("y", ">u4"), ("v", ">f8")])
    return np.frombuffer(b"".join(values), dtype=rec)


def consume_rate(kafka, topic, n):
    """Messages/s a read_committed group consumer gets with the daemon's settings."""
    c = Consumer(kafka.consumer(f"bench-consume-{uuid.uuid4().hex[:6]}", "bench"))
    c.subscribe([topic])
    got, t_first = 0, None
    deadline = time.monotonic() + 120
    try:
        while got < n and time.monotonic() < deadline:
            for m in c.consume(num_messages=10_000, timeout=0.5):
                if m.error():
                    if m.error().code() != KafkaError._PARTITION_EOF:
                        raise RuntimeError(m.error().str())
                    continue
                t_first = t_first or time.perf_counter()
                got += 1
        t = time.perf_counter() - t_first
    finally:
        c.close()
    if got < n:
        raise TimeoutError(f"consumed {got} of {n}")
    return {"messages": got, "seconds": round(t, 3), "msgs_per_s": round(got / t, 1),
            "us_per_msg": round(t * 1e6 / got, 3)}


def produce_rate(kafka, records, headers):
    """Records/s of a transactional producer (the daemon's settings) in one transaction."""
    topic = f"bench-produce-{uuid.uuid4().hex[:6]}"
    ensure_topics(kafka, [topic])
    conf = kafka.producer(f"bench-{uuid.uuid4().hex[:6]}")
    p = Producer(conf)
    p.init_transactions(30)
    full = 0
    t0 = time.perf_counter()
    p.begin_transaction()
    key = NAME.encode()
    for v in records:  # the loop of Checkpoint._produce
        while True:
            try:
                p.produce(topic, value=v, key=key, headers=headers)
                p.poll(0)
                break
            except BufferError:
                full += 1
                p.poll(0.05)
    t1 = time.perf_counter()
    p.commit_transaction(60)
    t2 = time.perf_counter()
    p.flush(30)
    n = len(records)
    return {"records": n, "produce_loop_s": round(t1 - t0, 3),
            "commit_transaction_s": round(t2 - t1, 3),
            "records_per_s": round(n / (t2 - t0), 1),
            "us_per_record": round((t2 - t0) * 1e6 / n, 3),
            "queue_full_waits": full}


def bench_stages(kafka, frames, text_records, input_topic, repeat):
    """Per-stage costs of (a), measured outside the daemon, and the alternatives."""
    h, w = frames[0].shape
    n = len(text_records)
    binary_records = input_records(frames, binary=True)
    out = {"pixels": n}
    out["consume_group_read_committed"] = consume_rate(kafka, input_topic, n)
    for label, recs in (("text", text_records), ("binary", binary_records)):
        t, _ = timed(lambda recs=recs: [decode_pixel(r) for r in recs], repeat)
        out[f"decode_pixel_{label}_us"] = round(t * 1e6 / n, 3)
        msgs = [FakeMessage(r, i) for i, r in enumerate(recs)]

        def assemble(msgs=msgs):
            a = PixelAssembler(PixelFrames(h, w), max_frames=len(frames), max_wait_ms=0)
            for m in msgs:
                a.add(m)
            return a.take()

        t, taken = timed(assemble, repeat)
        if len(taken.frames) != len(frames):
            raise RuntimeError(f"assembler gave {len(taken.frames)} frames")
        out[f"assembler_add_{label}_us"] = round(t * 1e6 / n, 3)
    t, _ = timed(lambda: bulk_decode_text(text_records), repeat)
    out["bulk_decode_text_numpy_us"] = round(t * 1e6 / n, 3)
    t, _ = timed(lambda: bulk_decode_binary(binary_records), repeat)
    out["bulk_decode_binary_numpy_us"] = round(t * 1e6 / n, 3)
    # the workers' encode task: one processed frame -> pixel records; then what gather moves
    k = KERNELS[1][1]
    frame = ndi.convolve(frames[0], k, mode="wrap")[:, :, None]
    header = FrameHeader(NAME, 0, 0, h, w, 1, "float64", "raw", "GRAY")
    info = FrameInfo(input_topic, 0, 0, NAME.encode(), header)
    for binary in (False, True):
        label = "binary" if binary else "text"
        t, recs = timed(lambda b=binary: pixel_records(frame, info, binary=b), repeat)
        out[f"pixel_records_{label}_us"] = round(t * 1e6 / (h * w), 3)
        blob = pickle.dumps(recs, protocol=5)
        t_load, _ = timed(lambda blob=blob: pickle.loads(blob), repeat)
        out[f"pickle_{label}_bytes_per_record"] = round(len(blob) / len(recs), 1)
        out[f"unpickle_{label}_us_per_record"] = round(t_load * 1e6 / len(recs), 3)
        if not binary:
            text_out = [v for _, v, _ in recs]
        else:
            binary_out = [v for _, v, _ in recs]
    lineage = lineage_headers(input_topic, 0, 0, "0123456789ab")
    t, _ = timed(lambda: [(b"t", b"k", v, [] + lineage) for v in text_out], repeat)
    out["build_record_with_lineage_us"] = round(t * 1e6 / len(text_out), 3)
    # produce 2 records per input pixel, as (a) does, in one transaction
    many = 2 * n
    reps_t = (text_out * (many // len(text_out) + 1))[:many]
    reps_b = (binary_out * (many // len(binary_out) + 1))[:many]
    out["produce"] = {
        "text_lineage_headers": produce_rate(kafka, reps_t, lineage),
        "text_no_headers": produce_rate(kafka, reps_t, None),
        "binary_lineage_headers": produce_rate(kafka, reps_b, lineage),
        "text_lineage_headers_big_queue": produce_rate(
            KafkaConfig(bootstrap=kafka.bootstrap, extra=BIG_QUEUE), reps_t, lineage),
    }
    return out


# -- report --------------------------------------------------------------------------------------


def machine():
    return {
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "scikit_image": skimage.__version__,
        "dask": dask.__version__,
        "distributed": distributed.__version__,
        "confluent_kafka": confluent_kafka.version()[0],
        "librdkafka": confluent_kafka.libversion()[0],
        "streamimg": streamimg.__version__,
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "timestamp": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def markdown(r):
    a, b = r["streamimg"], r["seed_python"]
    size = f"{r['shape'][0]}x{r['shape'][1]}"
    lines = [
        f"{r['frames']} frames of cameraman {size} = {r['pixels']:,} input pixels (text "
        f"records); {r['machine']['cpu_count']} cores; LocalCluster 2x1; embedded broker.",
        "",
        "| variant | pixels/s | vs seed | notes |",
        "|---|---:|---:|---|",
        f"| (b) seed design, plain Python, in memory | {b['pixels_per_s']:,.0f} | 1.00 | "
        f"{b['wall_s']:.2f} s: parse + expand/group/sum blur 3x3 and LoG 11x11 + format |",
        f"| (a) streamimg daemon, end to end from start | {a['pixels_per_s']:,.0f} | "
        f"{a['pixels_per_s'] / b['pixels_per_s']:.2f} | {a['from_start_s']:.2f} s incl. "
        f"{a['startup_s']['group_join']:.2f} s group join; Kafka in and out, exactly-once |",
        f"| (a) from partition assignment | {a['pixels_per_s_from_assign']:,.0f} | "
        f"{a['pixels_per_s_from_assign'] / b['pixels_per_s']:.2f} | {a['batches']} batches |",
    ]
    if a["steady_pixels_per_s"]:
        lines.append(f"| (a) steady (first -> last commit) | {a['steady_pixels_per_s']:,.0f} | "
                     f"{a['steady_pixels_per_s'] / b['pixels_per_s']:.2f} | |")
    names = {"binary": "(a') same pipeline, binary pixel records in and out"}
    for label, v in r.get("variants", {}).items():
        mb = v["ms_per_batch"]
        lines.append(
            f"| {names.get(label, label)}, from start | {v['pixels_per_s']:,.0f} | "
            f"{v['pixels_per_s'] / b['pixels_per_s']:.2f} | from assignment "
            f"{v['pixels_per_s_from_assign']:,.0f}; steady "
            f"{v['steady_pixels_per_s'] or float('nan'):,.0f}; {v['batches']} batches; submit "
            f"{mb['submit (poll thread)']:.1f} ms/batch, transaction "
            f"{mb['transaction (committer thread)']:.0f} ms/batch; poll thread CPU "
            f"{v['poll_thread_cpu_s']:.2f} s, committer {v['committer_thread_cpu_s']:.2f} s |")
    ds = a["daemon_stats"]
    lines += ["", f"(a) {a['frames_per_s_from_assign']:.2f} frames/s from assignment; first "
              f"commit {a['startup_s']['assign_to_first_commit']:.2f} s after assignment "
              f"({a['first_commit_frames']} frames, input offset {a['first_commit_pixels']:,}); "
              f"ms per batch: " + ", ".join(f"{k} {v}" for k, v in a["ms_per_batch"].items()),
              f"(a) {a['batches']} batches in {a['transactions']} transactions "
              "(the committer merges waiting batches; each transaction's ms counted once)",
              f"(a) daemon stats: batches_committed {ds['batches_committed']}, aborted "
              f"{ds['batches_aborted']}, chunks_resubmitted {ds['chunks_resubmitted']}, pauses "
              f"{ds['pauses']}, commit_ms {ds['commit_ms']:.0f} (sums Outcome.ms per batch; "
              f"{ds['commit_ms_per_batch']:.0f}/batch), records_out {ds['records_out']:,}",
              "", "| (a) threads (Listener + CPU sampling) | s | us/input pixel |",
              "|---|---:|---:|"]
    for k, v in a["threads_s"].items():
        lines.append(f"| {k} | {v:.3f} | {a['threads_us_per_input_pixel'][k]:.2f} |")
    lines += ["", f"(a) poll thread busy (CPU / wall, assignment -> end commit): "
              f"{a['poll_thread_busy_fraction']:.2f}",
              "", "| (a) Dask task prefix | tasks | tasks/frame | compute s |",
              "|---|---:|---:|---:|"]
    for k, v in a["dask_prefixes"].items():
        lines.append(f"| {k} | {v['tasks']} | {v['tasks_per_frame']} | {v['compute_s']:.3f} |")
    lines += ["", "(a) commits (s from start, transaction ms, input offset, frames, records): "
              + "; ".join(" ".join(str(x) for x in c) for c in a["timeline"]["commits"])]
    lines += ["", "(a) CPU (cores busy / us per input pixel): " + ", ".join(
        f"{k} {v['cores_busy']} / {v['us_per_input_pixel']}" for k, v in a["cpu"].items())]
    s = r.get("stages")
    if s:
        lines += ["", "| stage (micro-benchmark) | us per pixel/record |", "|---|---:|",
                  f"| consume (group, read_committed) | "
                  f"{s['consume_group_read_committed']['us_per_msg']:.2f} |"]
        for key in ("decode_pixel_text_us", "decode_pixel_binary_us", "assembler_add_text_us",
                    "assembler_add_binary_us", "bulk_decode_text_numpy_us",
                    "bulk_decode_binary_numpy_us", "pixel_records_text_us",
                    "pixel_records_binary_us", "unpickle_text_us_per_record",
                    "unpickle_binary_us_per_record", "build_record_with_lineage_us"):
            lines.append(f"| {key} | {s[key]:.3f} |")
        for k, v in s["produce"].items():
            lines.append(f"| produce {k} (txn, incl. commit) | {v['us_per_record']:.3f} "
                         f"({v['queue_full_waits']} queue-full waits) |")
    lines += ["", "b stages (us per input pixel): " + ", ".join(
        f"{k} {v}" for k, v in b["us_per_pixel"].items())]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 frames of 64x64, ~1 minute")
    parser.add_argument("--out", type=Path, default=None, help="JSON output path")
    parser.add_argument("--no-variants", action="store_true",
                        help="skip the stage micro-benchmarks and the two variant daemon runs")
    args = parser.parse_args(argv)
    size, n_frames = (64, 2) if args.quick else (256, 4)
    os.environ["PIXEL_FRAME_SIZE"] = f"{size}x{size}"
    frames = camera_frames(size, n_frames)
    shape = (size, size)
    records = input_records(frames)
    n = len(records)
    log(f"{n_frames} frames of {size}x{size}: {n} pixel records")

    log("(b) seed design in plain Python")
    b_outputs, b = run_seed(records, size, size)
    log(f"(b) {b['pixels_per_s']:,.0f} pixels/s")
    b_arrays = seed_arrays(b_outputs, n_frames, shape)
    del b_outputs

    result = {"mode": "quick" if args.quick else "full", "machine": machine(),
              "image": "skimage.data.camera() resized (anti-aliased), rounded 0-255",
              "frames": n_frames, "shape": [size, size], "pixels": n,
              "topology": "topologies/pixel_convolution.py (max_frames=4, max_wait_ms=100)",
              "seed_python": b}
    with ExitStack() as stack, tempfile.TemporaryDirectory() as tmp:
        broker = stack.enter_context(EmbeddedBroker())
        cluster = stack.enter_context(local_cluster(n_workers=2))
        client = stack.enter_context(Client(cluster))
        kafka = KafkaConfig(bootstrap=broker.bootstrap)
        client.run(warm)  # imports and a first run, so (a) measures a running service
        pids = list(client.run(os.getpid).values())
        cpu = CpuMeter(broker.process.pid, pids)
        input_topic = f"pixels-{uuid.uuid4().hex[:8]}"
        log(f"producing {n} pixel records to {input_topic}")
        result["produce_input_s"] = round(produce_input(kafka, input_topic, records), 3)

        log("(a) streamimg daemon")
        a, topology = run_streamimg(kafka, client, cpu, tmp, input_topic, n, n_frames, size)
        log(f"(a) {a['pixels_per_s']:,.0f} pixels/s from start")
        a_arrays, a["outputs"] = read_outputs(kafka, topology, n_frames, shape)
        result["streamimg"] = a
        result["checks"] = verify(a_arrays, b_arrays, frames)
        del a_arrays
        result["checks"]["outputs_complete_once"] = (
            a["outputs"]["records"] == {"blur": n, "log": n}
            and a["outputs"]["duplicates"] == 0 and a["outputs"]["dead_letters"] == 0)
        result["checks"]["committed_offset_at_end"] = committed_offsets(
            kafka, topology.name, [input_topic]).get((input_topic, 0)) == n

        if not args.no_variants:
            log("stage micro-benchmarks")
            result["stages"] = bench_stages(kafka, frames, records, input_topic,
                                            repeat=3 if args.quick else 1)
            result["variants"] = {}
            bin_topic = f"pixels-bin-{uuid.uuid4().hex[:8]}"
            produce_input(kafka, bin_topic, input_records(frames, binary=True))
            for label, variant, topic, conf in (("binary", "binary", bin_topic, kafka),):
                log(f"(a) variant {label}")
                v, topo = run_streamimg(conf, client, cpu, tmp, topic, n, n_frames, size,
                                        variant=variant)
                log(f"(a) variant {label}: {v['pixels_per_s']:,.0f} pixels/s from start")
                v_arrays, v["outputs"] = read_outputs(kafka, topo, n_frames, shape)
                v["checks"] = verify(v_arrays, b_arrays, frames)
                v["checks"]["outputs_complete_once"] = (
                    v["outputs"]["records"] == {"blur": n, "log": n}
                    and v["outputs"]["duplicates"] == 0 and v["outputs"]["dead_letters"] == 0)
                del v_arrays
                result["variants"][label] = v
        log("stopping")

    result["ratio_a_over_b"] = round(a["pixels_per_s"] / b["pixels_per_s"], 4)
    result["ratio_a_steady_over_b"] = round(
        (a["steady_pixels_per_s"] or float("nan")) / b["pixels_per_s"], 4)
    checks = result["checks"]
    ok = (all(v["ok"] for k, v in checks.items() if isinstance(v, dict))
          and checks["outputs_complete_once"] and checks["committed_offset_at_end"])
    for v in result.get("variants", {}).values():
        ok = ok and v["checks"]["outputs_complete_once"] and all(
            c["ok"] for c in v["checks"].values() if isinstance(c, dict))
    result["checks"]["all_ok"] = ok
    out = args.out or RESULTS / ("pixels_quick.json" if args.quick else "pixels.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(markdown(result))
    print(f"\nchecks: {json.dumps(checks)}")
    print(f"written to {out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
