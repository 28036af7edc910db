"""Run every ``benchmarks/bench_*.py`` in turn, each in its own process; summarise.

Usage: python benchmarks/run.py [--quick] [--only NAME ...]

Each script writes its JSON under ``benchmarks/results/`` and prints its table; this
runner passes ``--quick`` through, prints a summary (exit code and duration per
script) and exits non-zero if any script failed or none was found.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def discover(only=None):
    scripts = sorted(HERE.glob("bench_*.py"))
    if only:
        wanted = {n.removeprefix("bench_").removesuffix(".py") for n in only}
        scripts = [s for s in scripts if s.stem.removeprefix("bench_") in wanted]
    return scripts


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="pass --quick to every script")
    parser.add_argument("--only", nargs="+", metavar="NAME",
                        help="run only these (e.g. pipeline or bench_convolve.py)")
    args = parser.parse_args(argv)
    scripts = discover(args.only)
    if not scripts:
        print("no benchmarks/bench_*.py matched", file=sys.stderr)
        return 2
    summary = []
    for script in scripts:
        cmd = [sys.executable, str(script), *(["--quick"] if args.quick else [])]
        print(f"\n=== {script.name} {'(quick)' if args.quick else ''}", flush=True)
        start = time.perf_counter()
        try:
            code = subprocess.call(cmd, cwd=HERE.parent)
        except KeyboardInterrupt:
            code = 130
        summary.append((script.name, code, time.perf_counter() - start))
        if code == 130:
            break
    width = max(len(name) for name, _, _ in summary)
    print("\n=== summary")
    for name, code, seconds in summary:
        status = "ok" if code == 0 else f"FAILED (exit {code})"
        print(f"{name:<{width}}  {seconds:7.1f} s  {status}")
    failed = [name for name, code, _ in summary if code != 0]
    if len(summary) < len(scripts):
        failed.append("(interrupted)")
    print(f"{len(summary) - len([c for _, c, _ in summary if c])} of {len(scripts)} passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
