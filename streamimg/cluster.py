"""Local Dask clusters tuned for frame workloads: in the daemon's process, or worker processes.

``streamimg run`` without ``--scheduler`` uses :func:`in_process_cluster`: worker
threads inside the daemon's process, to which the daemon hands payloads and from
which it takes records without copying or pickling them (frame work is OpenCV,
NumPy and scikit-learn, which release the GIL). Measured on the light-work
benchmark (blur + palette on 720p, raw frames out): 22.8 frames/s in-process
against 18.6 with two worker processes, whose frames cross process boundaries
twice. :func:`local_cluster` (worker processes) is what the tests and the demo use
to exercise the remote path, and what ``streamimg run --processes`` starts.

Why the malloc settings: the Dask nanny starts workers with
``MALLOC_TRIM_THRESHOLD_=65536``, so glibc hands freed frame buffers (2.7 MB for a
720p RGB frame) back to the OS after every task and the next task faults them in
again. Measured on the demo pipeline: ~4,800 minor page faults per frame and
72-80 ms of worker CPU per frame; with a 256 MiB trim and a 64 MiB mmap threshold,
3-140 faults and 57-66 ms, about +30 % frames/s. On your own cluster set the same
``distributed.nanny.pre-spawn-environ`` values in the Dask configuration.
"""

from __future__ import annotations

import os
import signal
import threading

import cv2
import dask
from distributed import LocalCluster

from streamimg.broker import free_port

WORKER_ENV = {
    "MALLOC_TRIM_THRESHOLD_": str(256 * 1024 * 1024),
    "MALLOC_MMAP_THRESHOLD_": str(64 * 1024 * 1024),
    # One BLAS/OpenMP thread per worker thread: oversubscribing 2 cores made
    # scikit-learn's K-means 100x slower (measured; see the README).
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}

# The user's own OpenCV thread count, read once, at import: Dask's nanny copies its
# pre-spawn environment into this process's ``os.environ`` when it starts a worker
# (distributed 2026.8, ``WorkerProcess.start``), so after a first ``local_cluster`` the
# variable is there whether the user set it or we did.
USER_OPENCV_THREADS = os.environ.get("OPENCV_FOR_THREADS_NUM")


def local_cluster(n_workers: int = 2, threads_per_worker: int = 1,
                  dashboard_address: str = "127.0.0.1:0") -> LocalCluster:
    """Start a ``LocalCluster`` of worker processes on loopback with :data:`WORKER_ENV`.

    Their OpenCV thread pools get :func:`opencv_threads` ``(n_workers *
    threads_per_worker)`` threads, unless the user set ``OPENCV_FOR_THREADS_NUM``
    (:data:`USER_OPENCV_THREADS`).

    Parameters
    ----------
    n_workers, threads_per_worker : int
        One thread per worker suits CPU-bound frame work on few cores.
    dashboard_address : str
        ``host:port`` of the Dask dashboard; port 0 picks a free one.

    The worker processes ignore SIGINT: a terminal's Ctrl-C goes to the whole
    process group, and workers that died of it first would fail the batches in
    flight while the daemon drains them. They stop when the cluster is closed.
    (A process started while SIGINT is ignored keeps ignoring it: Python installs
    its KeyboardInterrupt handler only when the parent left SIGINT alone.)

    Dask's nanny passes these variables to a worker process by putting them into
    this process's ``os.environ`` (distributed 2026.8, ``WorkerProcess.start``), and
    leaves them there: processes this one starts afterwards inherit them. Start them
    with an environment saved before the cluster started if that matters (the peer
    benchmark does).

    Raises
    ------
    ValueError
        If ``n_workers`` or ``threads_per_worker`` is below 1.
    """
    if n_workers < 1 or threads_per_worker < 1:
        raise ValueError(f"n_workers={n_workers} and threads_per_worker={threads_per_worker} "
                         "must be >= 1")
    env = {f"distributed.nanny.pre-spawn-environ.{k}": v for k, v in WORKER_ENV.items()}
    if USER_OPENCV_THREADS is None:  # else the workers inherit the user's setting
        env["distributed.nanny.pre-spawn-environ.OPENCV_FOR_THREADS_NUM"] = str(
            opencv_threads(n_workers * threads_per_worker))
    dashboard_address, origins = _dashboard(dashboard_address)
    main = threading.current_thread() is threading.main_thread()  # signal.signal's rule
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None
    try:
        with dask.config.set({**env, **origins}):
            return LocalCluster(n_workers=n_workers, threads_per_worker=threads_per_worker,
                                dashboard_address=dashboard_address, host="127.0.0.1")
    finally:
        if main:
            signal.signal(signal.SIGINT, previous)


# Dask's statistical profiler samples every worker thread's stack every 10 ms on the event
# loop, holding the GIL the frame work needs. In the daemon's process that cost the heavy
# peer benchmark 70-74 ms of CPU per frame against 63 with a sample every 100 ms (with the
# profiler off: 66-68; runs on a loaded 2-core machine). The dashboard's Profile page stays.
# The event loop also wakes every 20 ms to time itself (``admin.tick``, which only feeds the
# "event loop unresponsive" warning): an idle in-process cluster's loop used 41-53 ms of CPU
# a second, 16-18 ms with a tick of 200 ms (measured, 20 s idle, 2 cores). Every wake takes
# the GIL from the worker threads.
IN_PROCESS_CONFIG = {"distributed.worker.profile.interval": "100ms",
                     "distributed.admin.tick.interval": "200ms"}


def _unless_configured(settings: dict[str, str]) -> dict[str, str]:
    """``settings`` without the keys the user configured (YAML or ``DASK_*`` variables).

    A key counts as configured when its value differs from the one Dask and distributed
    ship with, so a user's own ``distributed.admin.tick.interval`` wins over ours. (A
    setting equal to the shipped value cannot be told from none: it gets ours.)
    """
    shipped = dask.config.merge(*dask.config.defaults)
    return {k: v for k, v in settings.items()
            if dask.config.get(k, None) == dask.config.get(k, None, config=shipped)}


def opencv_threads(worker_threads: int) -> int:
    """OpenCV threads per frame when ``worker_threads`` frames compute at once: >= 1.

    The process's cores (its CPU affinity) divided among the worker threads. Dask
    already runs one frame per worker thread, and OpenCV's pool splitting each frame
    again over every core only oversubscribes them: its threads spin and wake for
    nothing. Measured on the peer benchmark (``bench_peers.py``), two worker threads
    on 2 cores, OpenCV at 1 thread against its default 2, four A/Bs of 3 runs each in
    turns, 2026-12-02/03: heavy work 2-5 % more frames/s in each and 2.3-4.2 ms less
    daemon CPU a frame where recorded; light work 0-1.1 ms less, frames/s -6 to +3 %
    (inside its spread), latency at 20 frames/s unchanged (p50 122-136 against 125-145
    ms).
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) // max(1, worker_threads))


def in_process_cluster(threads: int = 2, dashboard_address: str = "127.0.0.1:0") -> LocalCluster:
    """A ``LocalCluster`` with one worker of ``threads`` threads in this process.

    The worker samples stacks for the dashboard's Profile page every 100 ms, not
    every 10 ms, and the event loop times itself every 200 ms, not every 20 ms
    (:data:`IN_PROCESS_CONFIG`), unless the Dask configuration sets these keys.
    OpenCV's thread pool (process-wide, and left so when the cluster closes) is set
    to :func:`opencv_threads` ``(threads)``: 1 for two threads on 2 cores; unless
    the user set ``OPENCV_FOR_THREADS_NUM`` (:data:`USER_OPENCV_THREADS`), which
    OpenCV then follows.

    Raises
    ------
    ValueError
        If ``threads`` is below 1.
    """
    if threads < 1:
        raise ValueError(f"threads={threads} must be >= 1")
    if USER_OPENCV_THREADS is None:  # else OpenCV follows the user's setting
        cv2.setNumThreads(opencv_threads(threads))
    dashboard_address, origins = _dashboard(dashboard_address)
    with dask.config.set({**_unless_configured(IN_PROCESS_CONFIG), **origins}):
        return LocalCluster(n_workers=1, threads_per_worker=threads, processes=False,
                            dashboard_address=dashboard_address)


def _dashboard(address: str) -> tuple[str, dict[str, list[str]]]:
    """A loopback dashboard's address with a real port, and the websocket origins it allows.

    Dask allows every origin (``*``) by default, and Bokeh warns "Host wildcard"
    on every start. On loopback the dashboard is reached only as 127.0.0.1 or
    localhost on its port, so exactly those origins are allowed (port 0 is
    resolved to a free port first, as the port must be known). Other hosts keep
    Dask's setting.
    """
    host, _, port = address.rpartition(":")
    if host not in ("127.0.0.1", "localhost") or not port.isdigit():
        return address, {}
    port = port if int(port) else str(free_port(host))
    key = "distributed.scheduler.dashboard.bokeh-application.allow_websocket_origin"
    return f"{host}:{port}", {key: [f"127.0.0.1:{port}", f"localhost:{port}"]}


def dashboard_link(client) -> str:
    """The URL of the Dask dashboard a user can open.

    Dask builds ``client.dashboard_link`` from the scheduler's address; an
    in-process cluster's address is ``inproc://<this host's IP>``, while its
    dashboard listens on loopback only (see :func:`in_process_cluster`), so the
    link would point at an address nothing serves. For such a cluster the link
    names 127.0.0.1 and the dashboard's port; otherwise it is Dask's own.
    """
    address = client.scheduler.address if client.scheduler else ""
    port = client.scheduler_info().get("services", {}).get("dashboard")
    if address.startswith("inproc://") and port:
        return f"http://127.0.0.1:{port}/status"
    return client.dashboard_link
