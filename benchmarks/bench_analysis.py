"""Issue 4's benchmark: the full video-analysis topology against the same functions in a loop.

Runs ``bench_pipeline.py --full``: faces (CenterFace, <= 640 px side), blur, palette,
annotation and JPEG encode on 720p frames, (a) in a plain loop with per-stage times,
(b) the usual streamz way and (c) ``topologies/video_analysis.py`` under the daemon.
Writes ``benchmarks/results/analysis.json``.
Usage: python benchmarks/bench_analysis.py [--quick] [--frames N]
"""

import sys
from pathlib import Path

import cloudpickle

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_pipeline  # noqa: E402
import common  # noqa: E402

# Workers cannot import this folder: ship its functions by value.
cloudpickle.register_pickle_by_value(bench_pipeline)
cloudpickle.register_pickle_by_value(common)

if __name__ == "__main__":
    sys.exit(bench_pipeline.main(["--full", *sys.argv[1:]]))
