"""The per-frame work of ``bench_peers.py``, one copy shared by every variant.

Imported by the benchmark, by its Dask workers (streamz) and by the topology file the
streamimg daemon loads (``PYTHONPATH`` points here), so every variant runs the very same
code and its outputs can be compared byte for byte.

Light work: ``cv2.GaussianBlur(frame, (5, 5), 1)`` on the uint8 frame, then a K-means
palette (k=5, n_init=1) of the blurred frame on a fixed 10,000-pixel sample
(``streamimg.analytics.palette.palette``). Heavy work: sigma 3 with SciPy's kernel size
(radius ``int(4 * sigma + 0.5)``, so 25x25) and K-means with ``n_init=4``.
"""

import json

import cv2
import numpy as np
from sklearn.cluster import KMeans
from threadpoolctl import ThreadpoolController

from streamimg.analytics.palette import Palette, palette
from streamimg.codecs.frame import decode_payload, parse_header

K, SAMPLE, SEED = 5, 10_000, 0
_THREADPOOLS = []  # one ThreadpoolController per process (creating one scans the libraries)
LEVELS = {
    "light": {"ksize": 5, "sigma": 1.0, "n_init": 1},
    "heavy": {"ksize": 2 * int(4 * 3.0 + 0.5) + 1, "sigma": 3.0, "n_init": 4},
}


def blur(frame, level):
    p = LEVELS[level]
    return cv2.GaussianBlur(frame, (p["ksize"], p["ksize"]), p["sigma"])


def palette_of(frame, level):
    """The palette of one (blurred) frame; the library's function for the light work.

    Heavy: the same steps as ``streamimg.analytics.palette.palette`` (seeded sample,
    rounding, k capped at the distinct colours, one BLAS thread, colour order), with
    ``n_init=4``, which the library's function does not take.
    """
    n_init = LEVELS[level]["n_init"]
    if n_init == 1:
        return palette(frame, k=K, sample=SAMPLE, seed=SEED)
    pixels = np.asarray(frame)[:, :, :3].reshape(-1, 3)
    rng = np.random.default_rng(SEED)
    if len(pixels) > SAMPLE:
        pixels = pixels[np.sort(rng.choice(len(pixels), size=SAMPLE, replace=False))]
    points = np.clip(np.rint(pixels.astype(np.float64)), 0, 255)
    q = points.astype(np.uint32)
    k_eff = min(K, len(np.unique((q[:, 0] << 16) | (q[:, 1] << 8) | q[:, 2])))
    if not _THREADPOOLS:
        _THREADPOOLS.append(ThreadpoolController())
    with _THREADPOOLS[0].limit(limits=1):
        km = KMeans(n_clusters=k_eff, n_init=n_init, random_state=SEED, max_iter=100).fit(points)
    counts = np.bincount(km.labels_, minlength=k_eff).astype(np.float64)
    colors = np.clip(np.rint(km.cluster_centers_), 0, 255).astype(np.uint8)
    order = np.lexsort((colors[:, 2], colors[:, 1], colors[:, 0], -counts))
    return Palette(colors=colors[order], fractions=counts[order] / counts.sum(), ms=0.0)


def work(frame, level):
    """(blurred frame, palette dict) of one uint8 RGB frame."""
    blurred = blur(frame, level)
    return blurred, palette_of(blurred, level).to_dict()


def process_record(value, headers, level):
    """One raw frame message -> (blurred frame bytes, palette JSON bytes), for the peers.

    The outputs carry the input's headers: the blurred frame is a frame message of the same
    shape, stream, index and timestamp, and the JSON names the frame too.
    """
    header = parse_header(headers)
    blurred, pal = work(decode_payload(header, value), level)
    record = {"stream": header.stream, "frame": header.frame,
              "timestamp_ms": header.timestamp_ms, "palette": pal}
    return blurred.tobytes(), json.dumps(record).encode()


def _blur_block(block, level):
    out = np.empty_like(block)
    for i in range(block.shape[0]):
        out[i] = blur(block[i], level)
    return out


def blur_frames(frames, level):
    """streamimg ``map_frames`` operator: the blur per frame, one ``map_blocks`` task per chunk."""
    return frames.map_blocks(_blur_block, level=level, dtype=frames.dtype)


def process_item(item, level):
    """streamz map function: ``(meta, value)`` -> ``(meta, (blurred bytes, palette JSON))``."""
    meta, value = item
    return meta, process_record(value, meta[-1], level)
