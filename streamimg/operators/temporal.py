"""Temporal operators: frames computed from a window of a stream's consecutive frames.

``map_overlap`` along the time axis. A batch holds a few frames of each stream, so a
window that reaches back past the batch's first frame needs the frames of earlier
batches: they are the operator's state (the previous ``window - 1`` input frames of the
stream), carried by the state task from batch to batch and committed with the offsets
(see :mod:`streamimg.state`). The output of frame ``t`` is therefore the same whatever
the batching, and the same after a crash, restart or rebalance: the committed window
is restored with the offsets. Nothing is dropped at a batch boundary.

Each operator follows :class:`~streamimg.analytics.stateful.StatefulOp`, reading the
frame (h, w, c) as the value named by its ``needs`` and returning the output frame.

- :class:`TemporalWindow`: ``fn(window)`` over the last ``window`` frames (median,
  mean, difference, or your own function).
- :class:`Background`: a background model (temporal median of the previous frames, a
  running average, or MOG2) giving the background or a foreground mask.
- :class:`HeatField`: one temperature field integrated over the stream, each frame a
  heat source (the Flink ancestor's heat-equation stencil with a source term).

State size. The state holds frames, compressed with zlib level 1 (lossless): a window
of ``k`` frames commits ``k - 1`` frames per stream per batch. Measured on bikes.mp4
(2 cores, other work running): a 640x272 RGB frame, 522 KB, packs to 111 KB in 5 ms and
unpacks in 15 ms; scaled to 1280x720 (2.8 MB) it packs to 0.5 MB in 65 ms.
``Topology(max_state_bytes=...)`` bounds a partition's state (1,000,000 bytes by default:
about eight 640x272 frames of that clip); shrink frames before a long window
(``resize``), or use :class:`Background` with ``running_average`` (one float32 frame of
state).

Conventions. A stream's first frames see a shorter window (``fn`` gets the frames there
are, at least the current one). A frame whose shape or dtype differs from the window's
starts a new window. Frames that failed upstream (dead letters) are not in the window.
"""

from __future__ import annotations

import pickle
import zlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from streamimg.operators import mog2
from streamimg.operators.mog2 import Mixture
from streamimg.operators.stencils import HEAT_BOUNDARIES, diffuse, stability_bound

if TYPE_CHECKING:
    from streamimg.batching import FrameInfo

__all__ = ["BACKGROUND_METHODS", "WINDOW_FUNCTIONS", "Background", "HeatField",
           "TemporalWindow", "frame_difference", "window_mean", "window_median"]


def window_median(window: np.ndarray) -> np.ndarray:
    """Per-pixel median over time of ``window`` (m, h, w, c), in the frames' dtype.

    Integer frames are rounded half to even (``np.rint``) after ``np.median``; with an
    even ``m`` the median is the mean of the two middle values.
    """
    return _as_dtype(np.median(window, axis=0), window.dtype)


def window_mean(window: np.ndarray) -> np.ndarray:
    """Per-pixel mean over time of ``window`` (m, h, w, c), in the frames' dtype (denoising).

    Integer frames are rounded half to even after a float64 mean.
    """
    return _as_dtype(window.mean(axis=0, dtype=np.float64), window.dtype)


def frame_difference(window: np.ndarray) -> np.ndarray:
    """``|frame t - frame t-1|`` per pixel and channel, in the frames' dtype (h, w, c).

    ``max - min`` (no overflow for unsigned frames). A stream's first frame gives zeros.
    """
    if len(window) < 2:
        return np.zeros_like(window[-1])
    a, b = window[-1], window[-2]
    return np.maximum(a, b) - np.minimum(a, b)


#: Window functions by name, for :class:`TemporalWindow` and ``Stream.temporal``.
WINDOW_FUNCTIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "median": window_median, "mean": window_mean, "difference": frame_difference}
#: Methods of :class:`Background`.
BACKGROUND_METHODS = ("median", "running_average", "mog2")


class _ArrayState:
    """State as a list of arrays (frames, a field, a mixture), packed with :func:`pack`."""

    def initial(self) -> list[np.ndarray]:
        """No frames, field or model yet: the first frame starts them."""
        return []

    def dumps(self, state: list[np.ndarray]) -> bytes:
        """The state's arrays, zlib-compressed (:func:`pack`)."""
        return pack(state)

    def loads(self, data: bytes) -> list[np.ndarray]:
        """The arrays :meth:`dumps` packed."""
        return unpack(data)


class TemporalWindow(_ArrayState):
    """``fn`` over each frame's window: the frame and up to ``window - 1`` frames before it.

    Parameters
    ----------
    fn : str or callable
        A name of :data:`WINDOW_FUNCTIONS` (``"median"``, ``"mean"``, ``"difference"``),
        or ``fn(window (m, h, w, c), **kwargs) -> frame (h, w, c)``, oldest frame first
        and the current one last, ``1 <= m <= window``. Any dtype; it must be
        deterministic (a frame redone after a crash must give the same output).
    window : int
        Frames in a window, the current one included (>= 1; ``"difference"`` needs 2).
    input : str
        The value holding the input frame (see :meth:`streamimg.plan.Plan.with_frame_state`).
    **kwargs
        Passed to ``fn``.

    Raises
    ------
    ValueError
        For an unknown name, ``window`` < 1 (or < 2 for ``"difference"``), or (per frame)
        an output that is not a (h, w, c) array with the input's height and width.
    """

    order = None  # the output keeps the input's channel order

    def __init__(self, fn: str | Callable[..., np.ndarray], window: int, input: str,
                 **kwargs: Any):
        if isinstance(fn, str):
            if fn not in WINDOW_FUNCTIONS:
                raise ValueError(f"window function {fn!r} not one of {sorted(WINDOW_FUNCTIONS)} "
                                 "(or pass a function)")
            fn = WINDOW_FUNCTIONS[fn]
        elif not callable(fn):
            raise ValueError(f"fn must be a name or a function, got {fn!r}")
        if not isinstance(window, (int, np.integer)) or window < 1:
            raise ValueError(f"window must be an int >= 1 (frames), got {window!r}")
        if fn is frame_difference and window < 2:
            raise ValueError("difference needs window >= 2")
        self.fn, self.window, self.kwargs = fn, int(window), kwargs
        self.needs = (input,)

    def step(self, state: list[np.ndarray], info: FrameInfo,
             values: dict[str, Any]) -> tuple[list[np.ndarray], np.ndarray]:
        """Push the frame, return ``(the previous window - 1 frames, fn(window))``."""
        frame = np.asarray(values[self.needs[0]])
        window = _window(state, frame)
        out = _check_output(self.fn(np.stack(window), **self.kwargs), frame, "temporal fn")
        return window[max(0, len(window) - self.window + 1):] if self.window > 1 else [], out


class Background(_ArrayState):
    """A per-stream background model; the value is the background or a foreground mask.

    Parameters
    ----------
    method : {"median", "running_average", "mog2"}
        ``median``: the per-pixel median of the previous ``history`` frames (the current
        frame excluded; a stream's first frame is its own background). Exact and robust
        to objects passing through, at ``history`` frames of state.
        ``running_average``: ``B <- (1 - alpha) B + alpha F`` after each frame, in
        float32 (the classic running-average model, e.g. OpenCV's
        ``cv2.accumulateWeighted`` tutorial), one float32 frame of state.
        ``mog2``: Zivkovic's adaptive Gaussian mixture (:mod:`streamimg.operators.mog2`,
        OpenCV's ``BackgroundSubtractorMOG2`` without shadows) with its model as
        arrays, so it can be committed: 100 bytes of state a pixel for RGB (a 160x90
        frame: 1.4 MB), so shrink frames first and raise ``max_state_bytes``.
    history : int
        Frames of the median (>= 1); for ``mog2`` the learning horizon, the learning
        rate being ``1 / min(2 n, history)`` at frame ``n`` (OpenCV's default is 500).
    alpha : float
        Learning rate of the running average, in (0, 1].
    output : {"foreground", "background"}
        ``foreground``: a uint8 (h, w, 1) mask, 255 where any channel differs from the
        background by more than ``threshold`` (intensity units), else 0 (channel order
        ``GRAY``). ``background``: the background (h, w, c) in the frame's dtype.
    threshold : float
        Foreground threshold, in the frame's intensity units (>= 0); for ``mog2`` the
        squared Mahalanobis distance a background mode must be within (OpenCV's
        ``varThreshold``, 16 when None).
    input : str
        The value holding the input frame.

    Raises
    ------
    ValueError
        For an unknown method or output, ``history`` < 1, ``alpha`` outside (0, 1], or a
        negative ``threshold``.
    """

    def __init__(self, method: str = "median", *, history: int = 25, alpha: float = 0.05,
                 output: str = "foreground", threshold: float | None = None,
                 input: str = "frame"):
        if threshold is None:
            threshold = 16.0 if method == "mog2" else 25.0
        if method not in BACKGROUND_METHODS:
            raise ValueError(f"method {method!r} not one of {BACKGROUND_METHODS}")
        if output not in ("foreground", "background"):
            raise ValueError(f"output {output!r} not 'foreground' or 'background'")
        if not isinstance(history, (int, np.integer)) or history < 1:
            raise ValueError(f"history must be an int >= 1 (frames), got {history!r}")
        if not 0 < float(alpha) <= 1:
            raise ValueError(f"alpha must be in (0, 1], got {alpha!r}")
        if not float(threshold) >= 0:
            raise ValueError(f"threshold must be >= 0, got {threshold!r}")
        self.method, self.history, self.alpha = method, int(history), float(alpha)
        self.output, self.threshold = output, float(threshold)
        self.order = "GRAY" if output == "foreground" else None
        self.needs = (input,)

    def step(self, state: list[np.ndarray], info: FrameInfo,
             values: dict[str, Any]) -> tuple[list[np.ndarray], np.ndarray]:
        """The frame's background (from the frames before it), then the model updated."""
        frame = np.asarray(values[self.needs[0]])
        if frame.ndim != 3:
            raise ValueError(f"background: expects a (h, w, c) frame, got shape {frame.shape}")
        if self.method == "mog2":
            return self._mog2(state, frame)
        before = _window(state, frame)[:-1] if self.method == "median" else (
            state if state and state[0].shape == frame.shape else [])
        if self.method == "median":
            background = window_median(np.stack(before)) if before else frame
            state = [*before, frame][-self.history:]
        else:
            mean = before[0] if before else frame.astype(np.float32)
            background = _as_dtype(mean, frame.dtype)
            state = [((1 - self.alpha) * mean + self.alpha * frame).astype(np.float32)]
        if self.output == "background":
            return state, background
        diff = np.abs(frame.astype(np.float64) - background.astype(np.float64)).max(axis=2)
        return state, np.where(diff > self.threshold, 255, 0).astype(np.uint8)[:, :, None]

    def _mog2(self, state: list[np.ndarray], frame: np.ndarray
              ) -> tuple[list[np.ndarray], np.ndarray]:
        model = Mixture.of(state) if state else None
        if model is None or model.mu.shape[:2] + model.mu.shape[3:] != frame.shape:
            model = Mixture.empty(frame.shape)  # a new stream, or a new resolution
        foreground = mog2.apply(model, frame, self.history, self.threshold)
        if self.output == "background":
            return model.arrays(), _as_dtype(mog2.background_image(model), frame.dtype)
        return model.arrays(), np.where(foreground, 255, 0).astype(np.uint8)[:, :, None]


class HeatField(_ArrayState):
    """One temperature field per stream, integrated over the stream's frames.

    Each frame is the heat source of ``steps`` explicit heat-equation steps
    (:func:`streamimg.operators.stencils.diffuse`, per channel, source
    ``scale * frame``); the field after them is the frame's output, float32
    (h, w, c). The field is the state: it starts at zero and carries over from
    frame to frame, batch to batch, restart to restart.

    Parameters
    ----------
    steps : int
        Steps per frame (>= 1).
    alpha, dt, dx : float
        Diffusivity, time step, grid spacing; ``alpha dt / dx**2 <= 1/4``.
    scale : float
        Source per intensity unit (heating rate per unit of the frame's values).
    decay : float
        Fraction of the field lost per frame (0 keeps everything, so a constant source
        heats without bound), in [0, 1).
    boundary, cval : str, float
        As for :func:`~streamimg.operators.stencils.diffuse`.
    input : str
        The value holding the input frame.

    Raises
    ------
    ValueError
        For an unstable ``alpha dt / dx**2``, ``steps`` < 1, ``decay`` outside [0, 1),
        an unknown boundary, or non-finite numbers.
    """

    order = None

    def __init__(self, steps: int = 1, *, alpha: float = 0.25, dt: float = 1.0,
                 dx: float = 1.0, scale: float = 1.0, decay: float = 0.0,
                 boundary: str = "nearest", cval: float = 0.0, input: str = "frame"):
        if not isinstance(steps, (int, np.integer)) or steps < 1:
            raise ValueError(f"steps must be an int >= 1, got {steps!r}")
        numbers = {"alpha": alpha, "dt": dt, "dx": dx, "scale": scale, "decay": decay,
                   "cval": cval}
        if not all(np.isfinite(float(v)) for v in numbers.values()):
            raise ValueError(f"heat field settings must be finite, got {numbers}")
        if float(dt) <= 0 or float(dx) <= 0 or float(alpha) < 0:
            raise ValueError(f"need alpha >= 0, dt > 0, dx > 0; got {alpha}, {dt}, {dx}")
        r = float(alpha) * float(dt) / float(dx) ** 2
        if r > stability_bound(2):
            raise ValueError(f"alpha*dt/dx**2 = {r:g} exceeds the 2-D stability bound "
                             f"{stability_bound(2):g}")
        if not 0 <= float(decay) < 1:
            raise ValueError(f"decay must be in [0, 1), got {decay!r}")
        if boundary not in HEAT_BOUNDARIES:
            raise ValueError(f"boundary {boundary!r} not one of {HEAT_BOUNDARIES}")
        self.steps, self.alpha, self.dt, self.dx = int(steps), float(alpha), float(dt), float(dx)
        self.scale, self.decay = float(scale), float(decay)
        self.boundary, self.cval = boundary, float(cval)
        self.needs = (input,)

    def step(self, state: list[np.ndarray], info: FrameInfo,
             values: dict[str, Any]) -> tuple[list[np.ndarray], np.ndarray]:
        """Advance the field with this frame as the source; return it (float32)."""
        frame = np.asarray(values[self.needs[0]])
        if frame.ndim != 3:
            raise ValueError(f"heat field: expects a (h, w, c) frame, got shape {frame.shape}")
        field = state[0] if state and state[0].shape == frame.shape else np.zeros(
            frame.shape, np.float32)
        field = field * np.float32(1 - self.decay)
        out = np.empty(frame.shape, np.float32)
        for c in range(frame.shape[2]):
            source = frame[:, :, c].astype(np.float32) * np.float32(self.scale)
            out[:, :, c] = diffuse(field[:, :, c], self.steps, self.alpha, self.dt, self.dx,
                                   source=source, boundary=self.boundary, cval=self.cval)
        return [out], out.copy()



def pack(frames: list[np.ndarray]) -> bytes:
    """Frames as bytes: shape, dtype and zlib (level 1) of the C-order bytes of each."""
    return pickle.dumps([(f.shape, f.dtype.str, zlib.compress(np.ascontiguousarray(f), 1))
                         for f in frames], protocol=5)


def unpack(data: bytes) -> list[np.ndarray]:
    """The frames :func:`pack` gave ``data`` for (writable arrays)."""
    return [np.frombuffer(zlib.decompress(z), np.dtype(dt)).reshape(shape).copy()
            for shape, dt, z in pickle.loads(data)]


def _window(state: list[np.ndarray], frame: np.ndarray) -> list[np.ndarray]:
    """``state`` + ``frame``, restarted when the frame's shape or dtype differs."""
    if state and (state[-1].shape != frame.shape or state[-1].dtype != frame.dtype):
        state = []
    return [*state, frame]


def _as_dtype(x: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return np.clip(np.rint(x), info.min, info.max).astype(dtype)
    return np.asarray(x).astype(dtype)


def _check_output(out: Any, frame: np.ndarray, what: str) -> np.ndarray:
    out = np.asarray(out)
    if out.ndim != 3 or out.shape[:2] != frame.shape[:2]:
        raise ValueError(f"{what} must return a (h, w, c) frame of {frame.shape[:2]} pixels, "
                         f"got shape {out.shape}")
    return out
