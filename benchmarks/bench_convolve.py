"""Throughput of streamimg's convolve against scipy and against the seed's pixel-stream design.

Usage: python benchmarks/bench_convolve.py [--quick] [--out PATH]

1. Batches of float32 frames, one chunk per frame, threaded scheduler with 2 threads:
   frames/s of ``convolve`` (OpenCV and scipy inner filters) vs ``scipy.ndimage.convolve``
   frame by frame in a plain loop (and a plain ``cv2.filter2D`` loop as the ceiling).
2. The seed's design in plain Python: every pixel expanded to its (2h+1)(2w+1) neighbours
   with weighted values, grouped by coordinate in a dict and summed (periodic boundary),
   vs ``correlate(..., boundary="wrap")`` on the same frames; results must agree.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import time
from collections import defaultdict
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import scipy
import scipy.ndimage as ndi

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from streamimg.operators import convolve as conv_mod  # noqa: E402
from streamimg.operators.convolve import convolve, correlate  # noqa: E402
from streamimg.operators.kernels import box, gaussian, laplacian_of_gaussian  # noqa: E402

cv2 = conv_mod.cv2
RESULTS = Path(__file__).resolve().parent / "results"


def best_of(fn, repeat):
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def bench_batches(n, height, width, repeat, scipy_repeat):
    rng = np.random.default_rng(0)
    frames = (rng.random((n, height, width)) * 255).astype(np.float32)
    rows = []
    for size in (3, 5, 11):
        k = gaussian(size / 6.0, size=size)
        x = da.from_array(frames, chunks=(1, height, width), name=False)

        def ours(backend, k=k, x=x):
            return convolve(x, k, backend=backend).compute(scheduler="threads", num_workers=2)

        row = {"kernel": f"{size}x{size}", "frames": n, "shape": [height, width]}
        backends = ["scipy"] + (["opencv"] if cv2 is not None else [])
        out = None
        for backend in backends:
            out = ours(backend)  # warm-up, also the result checked below
            row[f"streamimg_{backend}_fps"] = n / best_of(lambda b=backend: ours(b), repeat)
        t = best_of(lambda k=k: [ndi.convolve(f, k, mode="reflect") for f in frames],
                    scipy_repeat)
        row["scipy_loop_fps"] = n / t
        if cv2 is not None:
            kf = k[::-1, ::-1].astype(np.float32)
            t = best_of(lambda kf=kf: [cv2.filter2D(f, -1, kf, borderType=cv2.BORDER_REFLECT)
                                       for f in frames], repeat)
            row["opencv_loop_fps"] = n / t
        ref = ndi.convolve(frames[0].astype(np.float64), k, mode="reflect")
        row["max_rel_err_vs_scipy"] = float(np.abs(out[0] - ref).max() / np.abs(ref).max())
        rows.append(row)
        print(f"  batch {size}x{size}: done", file=sys.stderr)
    return rows


def seed_convolution(frames, kernel):
    """The seed's expand/group/reduce, in plain Python dicts (periodic boundary)."""
    n, height, width = frames.shape
    hh, hw = kernel.shape[0] // 2, kernel.shape[1] // 2
    weights = [(dy, dx, float(kernel[hh + dy, hw + dx]))
               for dy in range(-hh, hh + 1) for dx in range(-hw, hw + 1)]
    pixels = [(f, x, y, float(frames[f, y, x]))
              for f in range(n) for y in range(height) for x in range(width)]
    acc = defaultdict(float)
    for f, x, y, v in pixels:  # expand: one weighted copy per neighbour, keyed by target
        for dy, dx, w in weights:
            acc[(f, (x - dx) % width, (y - dy) % height)] += v * w  # group + reduce (sum)
    out = np.empty(frames.shape)
    for (f, x, y), v in acc.items():
        out[f, y, x] = v
    return out


def bench_seed(n, height, width, repeat):
    rng = np.random.default_rng(1)
    frames = rng.random((n, height, width))
    rows = []
    for name, k in (("blur 3x3", box(3)), ("LoG 11x11 (sigma 1.4)", laplacian_of_gaussian(1.4))):
        pixels = n * height * width
        t0 = time.perf_counter()
        seed = seed_convolution(frames, k)
        t_seed = time.perf_counter() - t0
        x = da.from_array(frames, chunks=(1, height, width), name=False)

        def ours(k=k, x=x):
            return correlate(x, k, boundary="wrap").compute(scheduler="threads", num_workers=2)

        got = ours()
        t_ours = best_of(ours, repeat)
        rows.append({
            "kernel": name, "frames": n, "shape": [height, width],
            "seed_python_pixels_per_s": pixels / t_seed,
            "streamimg_pixels_per_s": pixels / t_ours,
            "speedup": t_seed / t_ours,
            "max_abs_diff": float(np.abs(got - seed).max()),
        })
        print(f"  seed {name}: done", file=sys.stderr)
    return rows


def machine():
    info = {
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "processor": platform.processor(),
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "dask": dask.__version__,
        "opencv": None if cv2 is None else cv2.__version__,
        "opencv_threads": None if cv2 is None else cv2.getNumThreads(),
        "timestamp": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    return info


def markdown(result):
    lines = ["| kernel | frames | shape | streamimg+OpenCV fps | streamimg+scipy fps "
             "| scipy loop fps | OpenCV loop fps | rel. err |",
             "|---|---|---|---|---|---|---|---|"]
    for r in result["batches"]:
        lines.append(
            f"| {r['kernel']} | {r['frames']} | {r['shape'][0]}x{r['shape'][1]} "
            f"| {r.get('streamimg_opencv_fps', float('nan')):.1f} "
            f"| {r['streamimg_scipy_fps']:.1f} | {r['scipy_loop_fps']:.1f} "
            f"| {r.get('opencv_loop_fps', float('nan')):.1f} | {r['max_rel_err_vs_scipy']:.1e} |")
    lines += ["", "| kernel | frames | shape | seed (Python) px/s | streamimg px/s | speed-up "
              "| max abs diff |", "|---|---|---|---|---|---|---|"]
    for r in result["seed"]:
        lines.append(
            f"| {r['kernel']} | {r['frames']} | {r['shape'][0]}x{r['shape'][1]} "
            f"| {r['seed_python_pixels_per_s']:,.0f} | {r['streamimg_pixels_per_s']:,.0f} "
            f"| {r['speedup']:,.0f}x | {r['max_abs_diff']:.1e} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, a few seconds")
    parser.add_argument("--out", type=Path, default=None, help="JSON output path")
    args = parser.parse_args(argv)
    if args.quick:
        batch = dict(n=8, height=270, width=480, repeat=3, scipy_repeat=1)
        seed = dict(n=2, height=32, width=32, repeat=3)
    else:
        batch = dict(n=32, height=1080, width=1920, repeat=3, scipy_repeat=1)
        seed = dict(n=4, height=64, width=64, repeat=5)
    result = {"mode": "quick" if args.quick else "full", "machine": machine(),
              "batches": bench_batches(**batch), "seed": bench_seed(**seed)}
    out = args.out or RESULTS / ("convolve_quick.json" if args.quick else "convolve.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(markdown(result))
    print(f"\nwritten to {out}")


if __name__ == "__main__":
    main()
