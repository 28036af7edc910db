"""K-means colour palette of a frame, computed on a fixed-seed pixel sample.

Why a sample is enough: the palette's fractions are proportions estimated
from ``sample`` pixels drawn uniformly without replacement; the standard error
of a proportion p is sqrt(p(1-p)/n) <= 0.5/sqrt(n), i.e. <= 0.005 at the
default n = 10,000, while a 720p frame has 921,600 pixels (92x fewer points for
K-means). Centroids move by far less than one grey level at that size.

Determinism: the sample indices come from ``numpy.random.default_rng(seed)``
and K-means (scikit-learn, k-means++ init, Lloyd iterations) is seeded with
the same ``seed`` and run on one thread, so a frame gives the same palette on
any worker, in any run, with any number of workers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from threadpoolctl import ThreadpoolController


@dataclass(frozen=True)
class Palette:
    """The k dominant colours of a frame.

    ``colors`` is (k, 3) uint8 RGB, ``fractions`` (k,) float64 summing to 1,
    both sorted by fraction, largest first; ``ms`` is the compute time in ms.
    """

    colors: np.ndarray
    fractions: np.ndarray
    ms: float

    def to_dict(self) -> dict:
        """JSON-ready form: colours as lists of ints, fractions rounded to 1e-6."""
        return {"colors": self.colors.astype(int).tolist(),
                "fractions": [round(float(f), 6) for f in self.fractions]}


_CONTROLLER: list[ThreadpoolController] = []


def _threadpools() -> ThreadpoolController:
    # One controller per process: threadpool_limits() scans the loaded libraries on every
    # call (3.8 ms measured, as much as a third of the palette); a kept controller's
    # limit() costs 0.03 ms.
    if not _CONTROLLER:
        _CONTROLLER.append(ThreadpoolController())
    return _CONTROLLER[0]


def palette(frame: np.ndarray, k: int = 5, sample: int = 10_000, seed: int = 0) -> Palette:
    """Compute the K-means colour palette of one frame.

    Parameters
    ----------
    frame : ndarray, shape (height, width, 3) RGB, (height, width, 4) RGBA or (height, width, 1)
        uint8, or a float/other integer dtype whose values are on the 0-255
        scale (rounded and clipped). Grey frames give grey colours; alpha is ignored.
    k : int
        Number of colours, >= 1. Fewer are returned when the sample has fewer
        distinct colours.
    sample : int
        Pixels sampled (without replacement) for the fit; all pixels if fewer.
    seed : int
        Seed of the sample and of K-means' initialisation.

    Returns
    -------
    Palette

    Raises
    ------
    ValueError
        If the frame is not (h, w, 1|3|4) or is empty, or ``k``/``sample`` < 1.
    """
    start = time.perf_counter()
    arr = np.asarray(frame)
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4) or arr.shape[0] * arr.shape[1] == 0:
        raise ValueError(f"palette needs a (h, w, 1|3|4) frame, got shape {arr.shape}")
    if k < 1 or sample < 1:
        raise ValueError(f"k={k} and sample={sample} must both be >= 1")
    pixels = arr[:, :, :3].reshape(-1, min(arr.shape[2], 3))
    if pixels.shape[1] == 1:
        pixels = np.repeat(pixels, 3, axis=1)
    rng = np.random.default_rng(seed)
    if len(pixels) > sample:
        pixels = pixels[np.sort(rng.choice(len(pixels), size=sample, replace=False))]
    points = np.clip(np.rint(pixels.astype(np.float64)), 0, 255)
    # Distinct colours as one packed integer each: np.unique(axis=0) sorted rows as
    # structured values, 11.8 ms for 10,000 pixels against 1.7 ms packed (measured).
    q = points.astype(np.uint32)
    distinct = len(np.unique((q[:, 0] << 16) | (q[:, 1] << 8) | q[:, 2]))
    k_eff = min(k, distinct)
    with _threadpools().limit(limits=1):  # Dask threads share 2 cores: oversubscription cost 100x
        from sklearn.cluster import KMeans  # 1.6 s to import: not at `streamimg run` start

        km = KMeans(n_clusters=k_eff, n_init=1, random_state=seed, max_iter=100).fit(points)
    counts = np.bincount(km.labels_, minlength=k_eff).astype(np.float64)
    colors = np.clip(np.rint(km.cluster_centers_), 0, 255).astype(np.uint8)
    order = np.lexsort((colors[:, 2], colors[:, 1], colors[:, 0], -counts))
    return Palette(colors=colors[order], fractions=counts[order] / counts.sum(),
                   ms=(time.perf_counter() - start) * 1e3)
