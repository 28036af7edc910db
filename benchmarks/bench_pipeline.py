"""End-to-end frames/s of the demo topology on the 720p clip, against two baselines.

Usage: python benchmarks/bench_pipeline.py [--frames N] [--quick] [--out PATH]

The same per-frame work (Gaussian blur sigma 2, K-means palette k=5 on 10,000 sampled
pixels, JPEG encode of the blurred frame, the analytics JSON) three ways, in one run:

(a) ``plain``: a single-process loop over the decoded frames (no Kafka, no Dask).
(b) ``streamz``: the usual streamz-on-Dask way, at-least-once: a consumer loop emits
    each raw frame record into ``scatter -> map -> buffer(8) -> gather -> sink``; the sink
    produces the JPEG and the JSON with a plain producer and stores the input offset
    (auto-commit of stored offsets).
(c) ``streamimg``: the demo pipeline run by ``streamimg.daemon.Daemon`` in a thread,
    exactly-once (one transaction per batch of 8 frames). By default the topology is built
    here, as ``topologies/video_analysis.py`` was written when this benchmark was (blur,
    palette, JPEG frames, analytics; max_frames=8, max_wait_ms=100, max_in_flight=4), so
    that (c) does exactly the work of (a) and (b); ``--topology FILE`` runs a topology file
    instead (then (c) may do other work than (a) and (b), and the JSON says so).

(b) and (c) share one embedded broker, one ``streamimg.cluster.local_cluster()`` (2
workers x 1 thread, tuned malloc) and one input topic of raw 720p frames (each its own consumer
group). Throughput of (b) and (c) is reported from their first input (partition
assignment; the group join of ~session.timeout.ms/2 is excluded) and, for (c), also
from daemon start and in steady state (first commit to last commit).

Dask tasks per frame: the scheduler's ``TaskPrefix.state_counts["processing"]`` (how many
times a task of that prefix started running on a worker) summed over prefixes, before and
after each variant; the scattered payloads are counted from ``state_counts["memory"]``
minus that. (b) runs one ``process_one`` task per frame; (c) one
``streamimg.worker.run_chunk`` task (prefix ``<topology>-chunk``) per chunk of a batch, one
chunk per worker thread, so about (worker threads / frames per batch) tasks per frame.
Worker time per task prefix comes from the prefixes' ``compute`` durations (task wall time);
for (c), whose one task does every stage, per-stage worker times come from the
``streamimg.timings_ms`` header of its analytics records (ms measured on the workers).
(c) is observed only through the daemon's public ``Listener`` hook (assignment, submit ms,
transaction outcomes) and by sampling its poll thread's CPU time from outside.
CPU time per process (main, broker, workers) comes from ``psutil``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import json
import math
import os
import platform
import sys
import threading
import time
import uuid
from collections import Counter
from contextlib import ExitStack
from pathlib import Path

import confluent_kafka
import dask
import distributed
import numpy as np
import psutil
from confluent_kafka import Consumer, Producer, TopicPartition
from distributed import Client

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import streamz  # noqa: E402
import streamz.dask  # noqa: E402, F401  (registers Stream.scatter)
from common import CpuMeter, by_transaction, log, minor_faults, thread_cpu_s  # noqa: E402
from streamz import Stream  # noqa: E402

from streamimg.admin import committed_offsets, ensure_topics, read_topic  # noqa: E402
from streamimg.analytics.palette import palette  # noqa: E402
from streamimg.batching import FrameInfo  # noqa: E402
from streamimg.broker import EmbeddedBroker  # noqa: E402
from streamimg.cluster import local_cluster  # noqa: E402
from streamimg.codecs.frame import (  # noqa: E402
    FrameHeader,
    decode_payload,
    encode_frame,
    parse_header,
)
from streamimg.config import KafkaConfig  # noqa: E402
from streamimg.daemon import Daemon, Listener  # noqa: E402
from streamimg.demo import clip_path  # noqa: E402
from streamimg.operators.blur import blur_frame  # noqa: E402
from streamimg.sinks.records import analytics_record, lineage_headers, read_lineage  # noqa: E402
from streamimg.sources.video import SourceFrame, produce_frames, read_video  # noqa: E402
from streamimg.topology import Topology, load_topology  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
INPUT = "frames"
STREAM = "bigbuckbunny"
SIGMA, K, SAMPLE, SEED, QUALITY = 2.0, 5, 10_000, 0, 90
WAIT_LIMIT_S = 900.0
# --full: the whole video-analysis work (faces on the sharp frame, blur, palette, boxes and
# palette strip drawn, JPEG), as topologies/video_analysis.py does (issue 4's benchmark).
FULL = False




# -- the per-frame work, shared by (a) and (b) ------------------------------------------------


def frame_info(topic, partition, offset, header):
    return FrameInfo(topic, partition, offset, STREAM.encode(), header)


def input_header(index, ts, shape):
    h, w, c = shape
    return FrameHeader(stream=STREAM, frame=index, timestamp_ms=ts, height=h, width=w,
                       channels=c, dtype="uint8", encoding="raw", order="RGB")


@functools.lru_cache(maxsize=1)
def face_detector():
    from streamimg.analytics.faces import FaceDetector

    return FaceDetector(max_side=640)


def work(frame, info, timings=None, full=None):
    """The topology's per-frame work; returns (jpeg value, jpeg headers, analytics JSON).

    ``full`` (default: the ``--full`` flag) adds faces and annotation. It is passed
    explicitly to the workers: a module global does not travel with the function.
    """
    full = FULL if full is None else full
    from streamimg.analytics.annotate import draw_detections, draw_palette

    marks = [("start", time.perf_counter())]
    faces = None
    if full:
        faces = face_detector().detect(frame)
        marks.append(("faces", time.perf_counter()))
    blurred = blur_frame(frame, SIGMA)
    marks.append(("blur", time.perf_counter()))
    pal = palette(blurred, k=K, sample=SAMPLE, seed=SEED)
    marks.append(("palette", time.perf_counter()))
    values = {"faces": faces, "palette": pal} if full else {"palette": pal}
    [(_, analytics, _)] = analytics_record(info, values)
    marks.append(("json", time.perf_counter()))
    out = blurred
    if full:
        out = draw_palette(draw_detections(blurred, faces), pal.colors, pal.fractions,
                           strip_height=max(16, blurred.shape[0] // 8))
        marks.append(("annotate", time.perf_counter()))
    h = info.header
    jpeg, headers = encode_frame(out, stream=h.stream, index=h.frame,
                                 timestamp_ms=h.timestamp_ms, encoding="jpeg",
                                 jpeg_quality=QUALITY)
    marks.append(("encode", time.perf_counter()))
    if timings is not None:
        for (_, a), (name, b) in zip(marks, marks[1:], strict=False):
            timings[name] = timings.get(name, 0.0) + (b - a)
    return jpeg, headers, analytics


def process_one(item, full):
    """(b)'s map function, on a worker: decode the raw record and do the work."""
    value, headers, topic, partition, offset = item
    header = parse_header(headers)
    frame = decode_payload(header, value)
    jpeg, jpeg_headers, analytics = work(frame, frame_info(topic, partition, offset, header),
                                         full=full)
    return topic, partition, offset, jpeg, jpeg_headers, analytics


def _warm(frame, full):
    """Import and run everything once on a worker (sklearn, OpenCV, ONNX) so no variant pays it."""
    import cv2

    work(frame, frame_info("warm", 0, 0, input_header(0, 0, frame.shape)), full=full)
    return {"pid": os.getpid(), "cv2_threads": cv2.getNumThreads()}


# -- measurement helpers ---------------------------------------------------------------------


def scheduler_counts(client):
    def collect(dask_scheduler):
        return {name: {"processing": int(tp.state_counts.get("processing", 0)),
                       "memory": int(tp.state_counts.get("memory", 0)),
                       "compute_s": float(tp.all_durations.get("compute", 0.0))}
                for name, tp in dask_scheduler.task_prefixes.items()}
    return client.run_on_scheduler(collect)


def counts_delta(before, after, frames):
    prefixes = {}
    for name, a in after.items():
        b = before.get(name, {"processing": 0, "memory": 0, "compute_s": 0.0})
        d = {k: a[k] - b[k] for k in a}
        if d["processing"] or d["memory"]:
            prefixes[name] = {"tasks": d["processing"],
                              "tasks_per_frame": round(d["processing"] / frames, 3),
                              "scattered": d["memory"] - d["processing"],
                              "compute_ms_per_frame": round(d["compute_s"] * 1e3 / frames, 3)}
    tasks = sum(p["tasks"] for p in prefixes.values())
    scattered = sum(p["scattered"] for p in prefixes.values())
    return {"tasks_per_frame": round(tasks / frames, 3),
            "scattered_per_frame": round(scattered / frames, 3),
            "worker_compute_ms_per_frame": round(
                sum(p["compute_ms_per_frame"] for p in prefixes.values()), 3),
            "prefixes": prefixes}


def cpu_delta(before, after, wall_s, frames):
    """Two CpuMeter samples as CPU ms and page faults per frame, per process group."""
    out = {}
    for name in after:
        if name == "machine":
            continue
        user, system, faults = (a - b for a, b in zip(after[name], before[name], strict=True))
        out[name] = {"cpu_s": round(user + system, 3), "sys_s": round(system, 3),
                     "cores_busy": round((user + system) / wall_s, 2),
                     "cpu_ms_per_frame": round((user + system) * 1e3 / frames, 1),
                     "minor_faults_per_frame": round(faults / frames)}
    ours = sum(v["cpu_s"] for v in out.values())
    other = after["machine"][0] - before["machine"][0] - ours
    out["other_processes"] = {"cpu_s": round(other, 3), "cores_busy": round(other / wall_s, 2)}
    return out


def output_check(kafka, topics, frames):
    """Per output topic: records, distinct input offsets, duplicates, missing, bytes/record."""
    out = {}
    for topic in topics:
        msgs = read_topic(kafka, topic, timeout_s=120)
        per_offset = Counter(read_lineage(m.headers())["offset"] for m in msgs)
        stage_ms = [json.loads(v) for m in msgs
                    if (v := dict(m.headers() or ()).get("streamimg.timings_ms"))]
        stages = sorted({k for t in stage_ms for k in t})
        out[topic] = {
            "records": len(msgs),
            "distinct_inputs": len(per_offset),
            "duplicates": sum(n - 1 for n in per_offset.values() if n > 1),
            "missing": len(set(range(frames)) - set(per_offset)),
            "value_bytes_per_record": round(sum(len(m.value()) for m in msgs) / max(1, len(msgs))),
            "palettes": ({read_lineage(m.headers())["offset"]: json.loads(m.value())["palette"]
                          for m in msgs} if topic.endswith("analytics") else None),
        }
        if stage_ms:  # the streamimg.timings_ms header: ms per stage, measured on the workers
            out[topic]["worker_stage_ms_per_frame"] = {
                k: round(sum(t.get(k, 0.0) for t in stage_ms) / len(stage_ms), 3)
                for k in stages}
    return out


def pop_palettes(check):
    return {t: c.pop("palettes") for t, c in check.items() if c.get("palettes") is not None}


# -- (a) plain loop --------------------------------------------------------------------------


def run_plain(frames):
    timings = {}
    work(frames[0], frame_info(INPUT, 0, 0, input_header(0, 0, frames[0].shape)))  # warm-up
    palettes = {}
    cpu0, machine0 = psutil.Process().cpu_times(), psutil.cpu_times()
    faults0 = minor_faults(os.getpid())
    t0 = time.perf_counter()
    for i, f in enumerate(frames):
        info = frame_info(INPUT, 0, i, input_header(i, ts_of(i), f.shape))
        _, _, analytics = work(f, info, timings)
        palettes[i] = json.loads(analytics)["palette"]
    wall = time.perf_counter() - t0
    cpu1, machine1 = psutil.Process().cpu_times(), psutil.cpu_times()
    machine_s = sum(machine1[:3]) - sum(machine0[:3])  # user + nice + system, all processes
    faults = minor_faults(os.getpid()) - faults0
    n = len(frames)
    stages = {k: round(v * 1e3 / n, 3) for k, v in timings.items()}
    stages["total"] = round(wall * 1e3 / n, 3)
    cpu_s = cpu1.user + cpu1.system - cpu0.user - cpu0.system
    return {"frames": n, "wall_s": round(wall, 3), "frames_per_s": round(n / wall, 2),
            "ms_per_frame": stages,
            "cpu": {"cores_busy": round(cpu_s / wall, 2),
                    "cpu_ms_per_frame": round(cpu_s * 1e3 / n, 1),
                    "sys_s": round(cpu1.system - cpu0.system, 3),
                    "minor_faults_per_frame": round(faults / n),
                    "other_processes_cores_busy": round((machine_s - cpu_s) / wall, 2)}}, palettes


def run_plain_one_thread(frames):
    """(a) again with OpenCV on one thread (as in one Dask worker thread on a free core)."""
    import cv2

    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        r, _ = run_plain(frames)
    finally:
        cv2.setNumThreads(threads)
    return {k: r[k] for k in ("frames", "frames_per_s", "ms_per_frame")}


def ts_of(i):
    return 1_700_000_000_000 + 40 * i


# -- (b) the usual streamz way ---------------------------------------------------------------


def run_streamz(kafka, client, n, cpu):
    group = f"bench-streamz-{uuid.uuid4().hex[:6]}"
    frames_topic, analytics_topic = "streamz.frames", "streamz.analytics"
    ensure_topics(kafka, [frames_topic, analytics_topic])
    consumer = Consumer({**kafka.consumer(group, f"{group}-0"), "enable.auto.commit": True,
                         "enable.auto.offset.store": False, "auto.commit.interval.ms": 1000})
    producer = Producer({**kafka.producer(), "acks": "all"})
    state = {"done": 0, "first_out": None, "last_out": None, "assigned": None}
    done = threading.Event()

    def on_assign(c, parts):
        state["assigned"] = state["assigned"] or time.perf_counter()

    def sink(result):
        topic, partition, offset, jpeg, jpeg_headers, analytics = result
        lineage = lineage_headers(topic, partition, offset, "streamz")
        producer.produce(frames_topic, value=jpeg, key=STREAM.encode(),
                         headers=jpeg_headers + lineage)
        producer.produce(analytics_topic, value=analytics, key=STREAM.encode(),
                         headers=[("content-type", b"application/json")] + lineage)
        producer.poll(0)
        # At-least-once: the input offset is stored for auto-commit only once its outputs
        # are handed to the producer.
        consumer.store_offsets(offsets=[TopicPartition(topic, partition, offset + 1)])
        now = time.perf_counter()
        state["first_out"] = state["first_out"] or now
        state["last_out"] = now
        state["done"] += 1
        if state["done"] >= n:
            done.set()

    source = Stream()
    sink_node = source.scatter().map(process_one, full=FULL).buffer(8).gather().sink(sink)
    before_counts, before_cpu = scheduler_counts(client), cpu.sample()
    t_start = time.perf_counter()
    consumer.subscribe([INPUT], on_assign=on_assign)
    consumed, t_first = 0, None
    try:
        while consumed < n:
            for m in consumer.consume(num_messages=8, timeout=0.1):
                if m.error():
                    log(f"streamz consumer: {m.error().str()}")
                    continue
                t_first = t_first or time.perf_counter()
                source.emit((m.value(), m.headers(), m.topic(), m.partition(), m.offset()))
                consumed += 1
            if time.perf_counter() - t_start > WAIT_LIMIT_S:
                raise TimeoutError("streamz: not all frames consumed")
        if not done.wait(WAIT_LIMIT_S):
            raise TimeoutError(f"streamz: {state['done']} of {n} outputs")
        left = producer.flush(60)
        t_end = time.perf_counter()
        if left:
            raise RuntimeError(f"streamz: {left} records undelivered")
    finally:
        consumer.close()  # commits the stored offsets
        for node in reversed([source, *_downstream(source)]):
            node.destroy()
        del sink_node
    after_counts, after_cpu = scheduler_counts(client), cpu.sample()
    wall = t_end - state["assigned"]
    check = output_check(kafka, [frames_topic, analytics_topic], n)
    committed = committed_offsets(kafka, group, [INPUT])
    result = {
        "frames": n,
        "from_start_s": round(t_end - t_start, 3),
        "from_first_input_s": round(t_end - t_first, 3),
        "frames_per_s": round(n / (t_end - t_first), 2),
        "frames_per_s_from_start": round(n / (t_end - t_start), 2),
        "steady_frames_per_s": round((n - 1) / (state["last_out"] - state["first_out"]), 2)
        if n > 1 else None,
        "first_output_s": round(state["first_out"] - t_first, 3),
        "committed_offset": committed.get((INPUT, 0)),
        "dask": counts_delta(before_counts, after_counts, n),
        "cpu": cpu_delta(before_cpu, after_cpu, wall, n),
        "outputs": check,
    }
    return result, pop_palettes(check)


def _downstream(node):
    out, todo = [], list(node.downstreams)
    while todo:
        x = todo.pop(0)
        if x not in out:
            out.append(x)
            todo.extend(x.downstreams)
    return out


# -- (c) streamimg ---------------------------------------------------------------------------


class Timeline(Listener):
    """Timestamps of the daemon's events, through its public listener hook."""

    def __init__(self):
        self.t_assign = None
        self.submits = []   # (start, seconds, frames)
        self.commits = []   # (end, transaction seconds, frames)
        self.outcomes = []  # committed Outcomes

    def assigned(self, partitions):
        self.t_assign = self.t_assign or time.perf_counter()

    def submitted(self, seq, frames, nbytes, ms):
        self.submits.append((time.perf_counter() - ms / 1e3, ms / 1e3, frames))

    def outcome(self, outcome):
        if outcome.status == "committed":
            self.outcomes.append(outcome)
            self.commits.append((time.perf_counter(), outcome.ms / 1e3,
                                 outcome.batch.frames + len(outcome.batch.dead)))

    def committed_frames(self):
        return sum(c[2] for c in self.commits)




def bench_topology(path=None):
    """The topology (c) runs: ``path`` if given, else the demo pipeline of (a) and (b)."""
    if path is not None:
        return load_topology(path)
    if FULL:
        return load_topology(Path(__file__).resolve().parents[1] / "topologies"
                             / "video_analysis.py")
    topology = Topology("video_analysis", inputs=INPUT, max_frames=8, max_wait_ms=100,
                        max_in_flight=4)
    (topology.source
        .gaussian_blur(sigma=SIGMA)
        .palette(k=K, sample=SAMPLE, seed=SEED)
        .to_kafka_frames(encoding="jpeg", jpeg_quality=QUALITY)
        .to_kafka_analytics())
    return topology


def run_streamimg(kafka, client, n, cpu, topology_path=None):
    topology = bench_topology(topology_path)
    timeline = Timeline()
    daemon = Daemon(topology, kafka, client, drain_timeout_s=60, listeners=[timeline])
    outcome = {}
    before_counts, before_cpu = scheduler_counts(client), cpu.sample()
    t_start = time.perf_counter()
    native = {}

    def run():
        native["id"] = threading.get_native_id()
        outcome["code"] = daemon.run()

    thread = threading.Thread(target=run, name="streamimg-daemon")
    thread.start()
    try:
        while timeline.committed_frames() < n:
            if not thread.is_alive():
                raise RuntimeError(f"the daemon stopped early: {outcome}")
            if time.perf_counter() - t_start > WAIT_LIMIT_S:
                raise TimeoutError(f"streamimg: {timeline.committed_frames()} of {n} committed")
            time.sleep(0.01)
        t_end = timeline.commits[-1][0]
        committed = committed_offsets(kafka, topology.name, [INPUT])
        poll_cpu = thread_cpu_s(native["id"])
    finally:
        daemon.stop()
        thread.join(90)
    if thread.is_alive():
        raise RuntimeError("the daemon did not stop within 90 s")
    after_counts, after_cpu = scheduler_counts(client), cpu.sample()
    wall = t_end - timeline.t_assign
    commits, submits = timeline.commits, timeline.submits
    batches = len(commits)
    first_end, first_frames = commits[0][0], commits[0][2]
    build_s = sum(s[1] for s in submits)
    txns = by_transaction(timeline.outcomes)
    txn_s = sum(ms for ms in txns.values()) / 1e3  # each transaction once
    stats = daemon.stats.to_dict()
    check = output_check(kafka, sorted(topology.output_topics), n)
    dlq = read_topic(kafka, topology.dlq_topic)
    result = {
        "frames": n, "batches": batches, "exit_code": outcome.get("code"),
        "transactions": len(txns),
        "from_start_s": round(t_end - t_start, 3),
        "from_first_input_s": round(wall, 3),
        "frames_per_s": round(n / wall, 2),
        "frames_per_s_from_start": round(n / (t_end - t_start), 2),
        "steady_frames_per_s": round((n - first_frames) / (t_end - first_end), 2)
        if batches > 1 else None,
        "group_join_s": round(timeline.t_assign - t_start, 3),
        "first_commit_s": round(first_end - timeline.t_assign, 3),
        "committed_offset": committed.get((INPUT, 0)),
        "ms_per_batch": {
            "submit (poll thread)": round(build_s * 1e3 / batches, 2),
            "transaction (committer thread)": round(txn_s * 1e3 / batches, 2),
            "transaction, per transaction": round(txn_s * 1e3 / len(txns), 2),
        },
        "poll_thread_submit_fraction": round(build_s / wall, 3),
        "poll_thread_cpu_s": round(poll_cpu, 3),
        "daemon_stats": {**stats,
                         "commit_ms_per_batch": round(stats["commit_ms"] / max(1, batches), 2)},
        "dask": counts_delta(before_counts, after_counts, n),
        "cpu": cpu_delta(before_cpu, after_cpu, wall, n),
        "outputs": check,
        "dead_letters": len(dlq),
        "timeline": {  # seconds from partition assignment; durations in ms
            "submits": [[round(t - timeline.t_assign, 3), round(d * 1e3, 1), k]
                        for t, d, k in submits],
            "commits": [[round(t - timeline.t_assign, 3), round(x * 1e3, 1), k]
                        for t, x, k in commits]},
    }
    return result, pop_palettes(check)


# -- main ------------------------------------------------------------------------------------


def machine(cv2_threads):
    import cv2
    import sklearn

    import streamimg

    return {
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "dask": dask.__version__,
        "distributed": distributed.__version__,
        "streamz": streamz.__version__,
        "confluent_kafka": confluent_kafka.__version__,
        "librdkafka": confluent_kafka.libversion()[0],
        "opencv": cv2.__version__,
        "scikit_learn": sklearn.__version__,
        "streamimg": streamimg.__version__,
        "opencv_threads": {"main": cv2.getNumThreads(), **cv2_threads},
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "loadavg_1_5_15_at_end": [round(x, 2) for x in os.getloadavg()],
        "timestamp": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


# (c)'s stage names (timings header) under (a)'s names where they are the same work.
C_STAGE_AS_A = {"gaussian_blur": "blur"}


def markdown(r):
    a, b, c = r["variants"]["plain"], r["variants"]["streamz"], r["variants"]["streamimg"]
    n = r["frames"]
    lines = [
        f"{n} frames of {r['clip']} (1280x720 RGB), {r['machine']['cpu_count']} cores, "
        "LocalCluster 2 workers x 1 thread, embedded broker (Tansu) on the same machine.",
        "",
        "| variant | frames/s | vs plain | Dask tasks/frame | notes |",
        "|---|---:|---:|---:|---|",
        f"| (a) plain loop, 1 process | {a['frames_per_s']:.1f} | 1.00 | - | "
        f"{a['ms_per_frame']['total']:.1f} ms/frame |",
        f"| (b) streamz scatter/map/buffer(8)/gather, at-least-once | {b['frames_per_s']:.1f} "
        f"| {b['frames_per_s'] / a['frames_per_s']:.2f} | {b['dask']['tasks_per_frame']:.2f} | "
        f"steady {b['steady_frames_per_s']} fps; duplicates "
        f"{max(o['duplicates'] for o in b['outputs'].values())} |",
        f"| (c) streamimg daemon, exactly-once | {c['frames_per_s']:.1f} "
        f"| {c['frames_per_s'] / a['frames_per_s']:.2f} | {c['dask']['tasks_per_frame']:.2f} | "
        f"steady {c['steady_frames_per_s']} fps; {c['frames_per_s_from_start']} fps incl. "
        f"{c['group_join_s']:.1f} s group join |",
        "",
        f"Ratios: c/a = {r['ratios']['c_over_a']:.2f}, c/b = {r['ratios']['c_over_b']:.2f}, "
        f"b/a = {r['ratios']['b_over_a']:.2f} (frames/s from first input).",
        "",
        "| stage | (a) ms/frame | (c) worker ms/frame (timings header) |",
        "|---|---:|---:|",
    ]
    c_stages = next((o["worker_stage_ms_per_frame"] for o in c["outputs"].values()
                     if "worker_stage_ms_per_frame" in o), {})
    c_stages = {C_STAGE_AS_A.get(k, k): v for k, v in c_stages.items()}
    for name in [*a["ms_per_frame"], *(k for k in c_stages if k not in a["ms_per_frame"])]:
        ams, cms = a["ms_per_frame"].get(name), c_stages.get(name)
        lines.append(f"| {name} | {'' if ams is None else f'{ams:.2f}'} | "
                     f"{'' if cms is None else f'{cms:.2f}'} |")
    if c_stages:
        lines.append(f"| (c) sum of stages | | {sum(c_stages.values()):.2f} |")
    lines += ["", "| Dask task prefix | tasks | tasks/frame | task wall ms/frame (2 workers "
              "share 2 cores with broker and daemon) |", "|---|---:|---:|---:|"]
    for x, v in (("b", b), ("c", c)):
        for name, p in sorted(((k, p) for k, p in v["dask"]["prefixes"].items() if p["tasks"]),
                              key=lambda kv: -kv[1]["compute_ms_per_frame"]):
            lines.append(f"| ({x}) {name} | {p['tasks']} | {p['tasks_per_frame']:.3f} | "
                         f"{p['compute_ms_per_frame']:.2f} |")
    pt = c["ms_per_batch"]
    lines += ["", "(c) ms per batch of "
              f"{n / c['batches']:.1f} frames: " + ", ".join(f"{k} {v}" for k, v in pt.items()),
              f"(c) {c['batches']} batches in {c['transactions']} transactions "
              "(the committer merges waiting batches)",
              f"(c) first commit {c['first_commit_s']:.2f} s after assignment; poll thread CPU "
              f"{c['poll_thread_cpu_s']:.2f} s; backpressure pauses "
              f"{c['daemon_stats']['pauses']}; chunks resubmitted "
              f"{c['daemon_stats']['chunks_resubmitted']}; aborted "
              f"{c['daemon_stats']['batches_aborted']}",
              f"(a) CPU: {a['cpu']['cores_busy']} cores busy, {a['cpu']['cpu_ms_per_frame']} "
              f"ms/frame, {a['cpu']['minor_faults_per_frame']} minor faults/frame; with OpenCV "
              f"on 1 thread {a['cv2_one_thread']['frames_per_s']} frames/s; other processes "
              f"on the machine {a['cpu']['other_processes_cores_busy']} cores",
              *(f"({x}) CPU, cores busy / ms per frame / minor faults per frame: " + ", ".join(
                  f"{k} {v['cores_busy']} / {v.get('cpu_ms_per_frame', '-')} / "
                  f"{v.get('minor_faults_per_frame', '-')}"
                  for k, v in r["variants"][name]["cpu"].items())
                for x, name in (("b", "streamz"), ("c", "streamimg")))]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=None,
                        help="frames (clip looped as needed); 528 by default, 64 with --quick")
    parser.add_argument("--quick", action="store_true", help="64 frames, about a minute")
    parser.add_argument("--out", type=Path, default=None, help="JSON output path")
    parser.add_argument("--full", action="store_true",
                        help="the whole video-analysis work: topologies/video_analysis.py "
                             "(faces, blur, palette, annotation) against the same functions")
    parser.add_argument("--topology", type=Path, default=None,
                        help="run this topology file in (c) instead of the built-in demo "
                             "pipeline (its work may then differ from (a) and (b))")
    args = parser.parse_args(argv)
    global FULL
    FULL = args.full
    n = args.frames or (64 if args.quick else 528)
    if n < 2:
        parser.error("--frames must be >= 2")
    clip = clip_path()
    log(f"decoding {clip.name}, {n} frames")
    frames = [f.image for f in read_video(clip, limit=n, loop=math.ceil(n / 132))]
    if len(frames) != n:
        raise RuntimeError(f"decoded {len(frames)} frames, wanted {n}")

    variants, palettes = {}, {}
    log("(a) plain loop")
    variants["plain"], palettes["plain"] = run_plain(frames)
    variants["plain"]["cv2_one_thread"] = run_plain_one_thread(frames[:132])
    log(f"(a) {variants['plain']['frames_per_s']} frames/s")

    with ExitStack() as stack:
        broker = stack.enter_context(EmbeddedBroker())
        cluster = stack.enter_context(local_cluster(n_workers=2))
        client = stack.enter_context(Client(cluster))
        kafka = KafkaConfig(bootstrap=broker.bootstrap)
        warm = client.run(_warm, frames[0], FULL)
        cpu = CpuMeter(broker.process.pid, [w["pid"] for w in warm.values()])
        cv2_threads = {f"worker{i}": w["cv2_threads"] for i, w in enumerate(warm.values())}
        ensure_topics(kafka, [INPUT])
        log(f"producing {n} raw frames to {INPUT!r}")
        t0 = time.perf_counter()
        ends = produce_frames(kafka, INPUT, (SourceFrame(i, ts_of(i), f)
                                             for i, f in enumerate(frames)),
                              stream=STREAM, encoding="raw")
        produce_s = time.perf_counter() - t0
        if ends != {0: n}:
            raise RuntimeError(f"produced {ends}, wanted {{0: {n}}}")
        del frames  # (b) and (c) read the frames from Kafka only

        log("(b) streamz")
        variants["streamz"], palettes["streamz"] = run_streamz(kafka, client, n, cpu)
        log(f"(b) {variants['streamz']['frames_per_s']} frames/s")
        log("(c) streamimg daemon")
        variants["streamimg"], palettes["streamimg"] = run_streamimg(kafka, client, n, cpu,
                                                                     args.topology)
        log(f"(c) {variants['streamimg']['frames_per_s']} frames/s")
        log("stopping")

    a, b, c = (variants[k]["frames_per_s"] for k in ("plain", "streamz", "streamimg"))
    ref = palettes["plain"]
    same = {name: all(p == ref for p in per_topic.values())
            for name, per_topic in palettes.items() if name != "plain"}
    c_out = variants["streamimg"]["outputs"]
    exactly_once = (all(o["records"] == n and o["distinct_inputs"] == n for o in c_out.values())
                    and variants["streamimg"]["dead_letters"] == 0
                    and variants["streamimg"]["committed_offset"] == n)
    result = {
        "mode": "quick" if args.quick else "full", "clip": clip.name, "frames": n,
        "shape": [720, 1280, 3], "machine": machine(cv2_threads),
        "topology": str(args.topology) if args.topology else
        "topologies/video_analysis.py" if FULL else
        "built-in: gaussian_blur(2.0).palette(k=5, sample=10000, seed=0)"
        ".to_kafka_frames(jpeg, q=90).to_kafka_analytics(); max_frames=8, max_wait_ms=100, "
        "max_in_flight=4",
        "produce_raw_s": round(produce_s, 3),
        "variants": variants,
        "ratios": {"c_over_a": round(c / a, 3), "c_over_b": round(c / b, 3),
                   "b_over_a": round(b / a, 3),
                   "c_steady_over_a": round(variants["streamimg"]["steady_frames_per_s"] / a, 3)},
        "checks": {"palettes_equal_plain": same, "streamimg_exactly_once": exactly_once,
                   "streamz_outputs_complete": all(
                       o["missing"] == 0 for o in variants["streamz"]["outputs"].values())},
    }
    stem = "analysis" if FULL else "pipeline"
    out = args.out or RESULTS / (f"{stem}_quick.json" if args.quick else f"{stem}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(markdown(result))
    print(f"\nchecks: {json.dumps(result['checks'])}")
    print(f"written to {out}")
    ok = exactly_once and all(same.values()) and result["checks"]["streamz_outputs_complete"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
