"""The chainable methods our topologies use, registered on ``streamz.Stream``.

This module (frame operators), :mod:`streamimg.stream_sinks` (the sinks),
:mod:`streamimg.stream_analytics` (per-frame analytics and drawing) and
:mod:`streamimg.stream_state` (the stateful operators), which it imports, are the
only ones that register anything; the base modules do not import them, so there is
no import cycle. ``import streamimg`` imports it.

A topology's pipeline runs once, when the topology compiles (see
``streamimg.plan``): each method maps a :class:`~streamimg.plan.Plan` to a new
plan, and each sink is a node (:class:`~streamimg.stream_sinks.KafkaSink`) whose
``update`` returns its :class:`~streamimg.plan.SinkSpec`, so ``source.emit(root)``
returns the sinks. Sinks pass the plan on, so a pipeline can have several sinks; the
daemon produces all of a batch's records in one transaction with its input
offsets (exactly-once). Names never shadow streamz's own methods (its
``to_kafka`` stays usable).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import dask.array as _da
import numpy as np
from streamz import Stream

from streamimg.operators import augment as _augment
from streamimg.operators import color as _color
from streamimg.operators import geometry as _geometry
from streamimg.operators import kernels as _kernels
from streamimg.operators import stencils as _stencils
from streamimg.operators.blur import gaussian_blur as _gaussian_blur
from streamimg.operators.convolve import BOUNDARIES
from streamimg.operators.convolve import convolve as _convolve
from streamimg.operators.convolve import correlate as _correlate
from streamimg.topology import TopologyError


def _register(fn: Callable) -> Callable:
    Stream.register_api(attribute_name=fn.__name__)(fn)
    return fn


@_register
def gaussian_blur(stream: Stream, sigma: float, *, truncate: float = 4.0,
                  mode: str = "reflect") -> Stream:
    """Blur every frame with an isotropic Gaussian over its two spatial axes.

    See :func:`streamimg.operators.blur.gaussian_blur` (OpenCV in float32; equals
    ``scipy.ndimage.gaussian_filter`` to 6e-5). Channels are blurred separately.

    Frames keep their shape (h, w, c) and dtype (integer results are rounded half to
    even and clipped to the dtype's range).

    Parameters
    ----------
    stream : streamz.Stream
        The upstream node (``self`` when called as a method).
    sigma : float
        Standard deviation in pixels, > 0.
    truncate : float
        Kernel radius in standard deviations: ``int(truncate * sigma + 0.5)`` pixels.
    mode : {"reflect", "mirror", "nearest", "constant"}
        How the frame is extended beyond its edges, with ``scipy.ndimage`` names.

    Raises
    ------
    TopologyError
        For a non-positive ``sigma`` (pixels) or an unknown ``mode``.
    """
    if not sigma > 0:
        raise TopologyError(f"gaussian_blur: sigma must be > 0 pixels, got {sigma}")
    return stream.map(lambda p: p.map_frames("gaussian_blur", _gaussian_blur, sigma=sigma,
                                             truncate=truncate, mode=mode))


def _kernel_or_error(kernel: Any, what: str) -> np.ndarray:
    try:
        return _kernels.from_matrix(np.asarray(kernel, dtype=np.float64))
    except ValueError as exc:
        raise TopologyError(f"{what}: {exc}") from None


def _filter_stream(stream: Stream, fn: Callable, what: str, kernel: Any, boundary: str,
                   cval: float, output_dtype: Any) -> Stream:
    k = _kernel_or_error(kernel, what)
    if boundary not in BOUNDARIES:
        raise TopologyError(f"{what}: boundary {boundary!r} not one of {BOUNDARIES}")
    return stream.map(lambda p: p.map_frames(what, fn, kernel=k, boundary=boundary, cval=cval,
                                             output_dtype=output_dtype))


@_register
def convolve(stream: Stream, kernel: Any, boundary: str = "reflect", cval: float = 0.0,
             output_dtype: Any = None) -> Stream:
    """Convolve every frame with a 2-D ``kernel`` over the spatial axes, per channel.

    See :func:`streamimg.operators.convolve.convolve`: equals
    ``scipy.ndimage.convolve`` with ``mode=boundary``.

    Frames keep their shape (h, w, c).

    Parameters
    ----------
    stream : streamz.Stream
        The upstream node (``self`` when called as a method).
    kernel : array_like, shape (kh, kw)
        Odd ``kh`` and ``kw``, finite weights (see :mod:`streamimg.operators.kernels`).
    boundary : {"reflect", "mirror", "nearest", "wrap", "constant"}
        How the frame is extended beyond its edges (``scipy.ndimage`` names).
    cval : float
        Fill value for ``boundary="constant"``, in input intensity units.
    output_dtype : None, "input" or dtype
        ``None``: the compute dtype (float32 for integer frames, so a uint8 frame becomes
        float32: a PNG sink after it fails at start-up, a JPEG sink rounds and clips).
        ``"input"``: the frame's dtype, rounded half to even and clipped.

    Raises
    ------
    TopologyError
        For a kernel that is not 2-D with odd sides, or an unknown boundary.
    """
    return _filter_stream(stream, _convolve, "convolve", kernel, boundary, cval, output_dtype)


@_register
def correlate(stream: Stream, kernel: Any, boundary: str = "reflect", cval: float = 0.0,
              output_dtype: Any = None) -> Stream:
    """Correlate every frame with ``kernel`` (as :func:`convolve`, kernel not flipped).

    Equals ``scipy.ndimage.correlate``; arguments, shapes, dtypes and errors as for
    :func:`convolve`.
    """
    return _filter_stream(stream, _correlate, "correlate", kernel, boundary, cval, output_dtype)


@_register
def augment(stream: Stream, hflip: float = 0.0, vflip: float = 0.0, rotate: float = 0.0,
            crop: float = 1.0, brightness: float = 0.0, contrast: float = 0.0,
            noise: float = 0.0, seed: int = 0) -> Stream:
    """Augment every frame at random, seeded by its identity (stream id, frame index).

    See :mod:`streamimg.operators.augment`: flips (probabilities), rotation (largest
    angle, degrees), crop (smallest side fraction, resized back), brightness and contrast
    (fractions), Gaussian noise (standard deviation, intensity units). A frame redone
    after a crash gets the same augmentation, so exactly-once outputs stay byte-identical.
    Frames keep their shape and dtype.

    Raises
    ------
    TopologyError
        For a probability outside [0, 1], a negative magnitude or ``crop`` outside (0, 1].
    """
    try:
        settings = _augment.Augment(hflip, vflip, rotate, crop, brightness, contrast, noise,
                                    seed)
    except ValueError as exc:
        raise TopologyError(f"augment: {exc}") from None
    return stream.map(lambda p: p.map_frames("augment", _augment.augment_frame, per_frame=True,
                                             settings=settings))


@_register
def diffuse(stream: Stream, steps: int, alpha: float = 0.25, dt: float = 1.0, dx: float = 1.0,
            boundary: str = "nearest", cval: float = 0.0) -> Stream:
    """Run ``steps`` explicit heat-equation steps on every frame, channel by channel.

    See :func:`streamimg.operators.stencils.diffuse_frames` (the Flink ancestor's FTCS
    stencil, ``r = alpha dt / dx**2 <= 1/4``). Frames keep their shape (h, w, c); integer
    frames become float64.

    Raises
    ------
    TopologyError
        For an unstable step, an unknown boundary or ``steps`` < 0.
    """
    try:
        _stencils.diffuse_frames(_da.zeros((1, 3, 3, 1), chunks=1), steps, alpha, dt, dx,
                                 boundary, cval)
    except ValueError as exc:
        raise TopologyError(f"diffuse: {exc}") from None
    return stream.map(lambda p: p.map_frames("diffuse", _stencils.diffuse_frames, steps=steps,
                                             alpha=alpha, dt=dt, dx=dx, boundary=boundary,
                                             cval=cval))


@_register
def heat_step(stream: Stream, alpha: float = 0.25, dt: float = 1.0, dx: float = 1.0,
              boundary: str = "nearest", cval: float = 0.0) -> Stream:
    """One explicit heat-equation step on every frame: :func:`diffuse` with ``steps=1``.

    Raises
    ------
    TopologyError
        As for :func:`diffuse`.
    """
    return diffuse(stream, 1, alpha, dt, dx, boundary, cval)


def _transform(frames: Any, fn: Callable, kwargs: dict[str, Any]) -> Any:
    """A frame transform over a Dask array of whole frames, one chunk per frame."""
    shape, dtype = _out_meta(fn, tuple(sorted(kwargs.items())), frames.shape[1:],
                             frames.dtype.str)
    return frames.map_blocks(fn, **kwargs, chunks=((1,) * frames.shape[0], *[(n,) for n in shape]),
                             dtype=dtype)


@functools.lru_cache(maxsize=256)
def _out_meta(fn: Callable, kwargs: tuple, shape: tuple, dtype: str) -> tuple[tuple, np.dtype]:
    # Shape/dtype of fn's output, found once per input kind on a 1-frame zero batch.
    out = fn(np.zeros((1, *shape), dtype), **dict(kwargs))
    return out.shape[1:], out.dtype


# convert_color's colour spaces (case-insensitive) -> the frame header's channel order.
_ORDER_OF = {"rgb": "RGB", "bgr": "BGR", "gray": "GRAY", "hsv": "HSV", "lab": "Lab"}


def _register_transform(fn: Callable) -> None:
    name = fn.__name__

    def method(stream: Stream, *args: Any, **kwargs: Any) -> Stream:
        params = list(inspect.signature(fn).parameters)[1:]
        kwargs.update(zip(params, args, strict=False))
        try:  # fail at start-up on bad arguments, not on the first frame
            _out_meta(fn, tuple(sorted(kwargs.items())), (8, 8, 3), "|u1")
        except (ValueError, TypeError) as exc:
            raise TopologyError(f"{name}: {exc}") from None
        order = _ORDER_OF.get(str(kwargs.get("dst", "")).lower()) if name == "convert_color" \
            else None
        return stream.map(lambda p: p.map_frames(name, _transform, channel_order=order, fn=fn,
                                                 kwargs=kwargs))

    method.__name__ = name
    method.__doc__ = (f"Apply ``{fn.__module__}.{name}`` to every frame "
                      f"(shapes and dtypes as documented there).")
    Stream.register_api(attribute_name=name)(method)


for _fn in (_geometry.resize, _geometry.crop, _geometry.center_crop, _color.convert_color,
            _color.normalize, _color.equalize_hist, _color.clahe, _geometry.flip, _geometry.hflip,
            _geometry.vflip, _geometry.rot90):
    _register_transform(_fn)


@_register
def map_frames(stream: Stream, fn: Callable[..., Any], **kwargs: Any) -> Stream:
    """Apply your own Dask-array operator to every frame.

    ``fn(frames, **kwargs)`` gets a ``dask.array.Array`` of shape (n, h, w, c), one
    chunk per frame, and returns a Dask array that keeps the leading frame axis and one
    chunk per frame (as ``map_blocks`` and ``map_overlap`` do); shape and dtype of the
    frames may change. It sees whole frames, so a boundary handled inside it equals the
    boundary of the whole frame. ``fn`` travels to the workers with the program
    (cloudpickle); its name names the stage in ``streamimg.timings_ms``.

    Raises
    ------
    TopologyError
        (when the topology compiles) if ``fn`` raises on the synthetic frame of the
        declared input, naming the stage.
    """
    name = getattr(fn, "__name__", "map_frames")
    return stream.map(lambda p: p.map_frames(name, fn, **kwargs))


# The sinks (to_kafka_frames, to_files, ...), the analytics methods (palette, detect,
# classify, annotate, ...) and the stateful operators' (track, count_line, count_zone,
# stateful) live beside these; importing them registers them.
import streamimg.stream_analytics  # noqa: E402,F401
import streamimg.stream_sinks  # noqa: E402,F401
import streamimg.stream_state  # noqa: E402,F401
