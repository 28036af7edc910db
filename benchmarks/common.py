"""Measurement helpers shared by the benchmarks: logging, CPU time and page faults by process."""

import os
import sys
import time

import psutil


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def minor_faults(pid):
    """Minor page faults of a process so far (field 10 of /proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[7])


def thread_cpu_s(native_id):
    """CPU seconds (user+system) of one thread of this process; NaN if it is gone."""
    for t in psutil.Process().threads():
        if t.id == native_id:
            return t.user_time + t.system_time
    return float("nan")


class CpuMeter:
    """CPU time of this process, the broker and the Dask workers, and of the whole machine.

    ``sample()`` returns ``{group: (user_s, system_s, minor_faults)}`` for the groups
    ``main`` (this process unless ``main_pids`` says otherwise), ``broker`` and ``workers``,
    plus ``machine`` (user+nice+system of all processes, which shows other load on a shared
    host); each benchmark turns two samples into its own report (per frame, per pixel).
    """

    def __init__(self, broker_pid, worker_pids, main_pids=None):
        self.groups = {"main": main_pids or [os.getpid()], "broker": [broker_pid],
                       "workers": worker_pids}

    def sample(self):
        out = {}
        for name, pids in self.groups.items():
            user = system = faults = 0.0
            for pid in pids:
                try:
                    t = psutil.Process(pid).cpu_times()
                    user, system = user + t.user, system + t.system
                    faults += minor_faults(pid)
                except (psutil.Error, OSError):
                    pass
            out[name] = (user, system, faults)
        t = psutil.cpu_times()
        out["machine"] = (t.user + t.nice + t.system, 0.0, 0.0)
        return out


def by_transaction(outcomes):
    """``{transaction number: ms}`` of committed daemon Outcomes (merged batches share one)."""
    return {o.txn: o.ms for o in outcomes}
