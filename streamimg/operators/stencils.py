"""Explicit (FTCS) heat-equation stencils on NumPy and Dask arrays.

The seed's second half integrated ``dT/dt = alpha * laplacian(T) + q / (c_p rho)`` with the
explicit forward-time, centred-space scheme on a 3-D lattice::

    T[n+1] = (1 - 2 d r) T[n] + r * (sum of the 2 d nearest neighbours of T[n]) + dt * s

with ``r = alpha * dt / dx**2``, ``d`` the number of dimensions (7-point stencil in 3-D,
5-point in 2-D) and ``s = q / (c_p rho)`` the heating rate. It is first order in time and
second order in space, ``O(dt + dx**2)``, and stable only for ``r <= 1 / (2 d)`` (von Neumann
analysis: R. J. LeVeque, *Finite Difference Methods for Ordinary and Partial Differential
Equations*, SIAM 2007, sec. 9.6; W. H. Press et al., *Numerical Recipes*, 3rd ed., sec.
20.2). The seed left stability aside; here an unstable step is refused.

Instead of the seed's expand/group/reduce over (coordinate, value) pairs, the field stays a
Dask array and :func:`diffuse` runs ``k`` steps per ``map_overlap`` with halo depth ``k``:
after ``k`` steps the wrong values that a block's artificial edge introduces have spread
exactly ``k`` cells, which is the halo that is then trimmed. So ``steps`` steps cost
``ceil(steps / k)`` graph layers instead of ``steps``, for ``2 k / chunk`` redundant work per
split axis.

Boundaries (the values of the ghost cells just outside the field, re-applied every step):

- ``"nearest"``: ghost = edge cell. No flux crosses the outer faces: an insulated wall
  (homogeneous Neumann condition, cell-centred). Without a source, total heat is conserved.
- ``"wrap"``: periodic, the field lives on a torus. Total heat is conserved.
- ``"constant"``: ghost = ``cval``. A wall held at temperature ``cval`` (Dirichlet
  condition, imposed half a cell outside the edge cells).
"""

from __future__ import annotations

import math
from functools import partial

import dask.array as da
import numpy as np
import scipy.ndimage as ndi

__all__ = ["HEAT_BOUNDARIES", "diffuse", "diffuse_frames", "heat_step", "stability_bound"]

#: Supported boundary names (scipy.ndimage mode names).
HEAT_BOUNDARIES = ("nearest", "wrap", "constant")


def stability_bound(ndim: int) -> float:
    """Largest stable ``r = alpha * dt / dx**2`` for the explicit scheme: ``1 / (2 ndim)``.

    Parameters
    ----------
    ndim : int
        Number of spatial dimensions, 2 or 3.

    Returns
    -------
    float
        0.25 in 2-D, 1/6 in 3-D (LeVeque 2007, sec. 9.6).

    Raises
    ------
    ValueError
        If ``ndim`` is not 2 or 3.
    """
    if ndim not in (2, 3):
        raise ValueError(f"field must be 2-D or 3-D, got {ndim} dimensions")
    return 1.0 / (2 * ndim)


def _check(field, alpha: float, dt: float, dx: float, source, boundary: str) -> float:
    """Validate the arguments; return ``r = alpha * dt / dx**2``."""
    bound = stability_bound(field.ndim)
    if field.dtype.kind not in "iuf":
        raise ValueError(f"field must have an integer or float dtype, got {field.dtype}")
    for name, value, low in (("alpha", alpha, 0.0), ("dt", dt, None), ("dx", dx, None)):
        ok = math.isfinite(value) and (value >= low if low is not None else value > 0)
        if not ok:
            rule = ">= 0" if low is not None else "> 0"
            raise ValueError(f"{name} must be finite and {rule}, got {value!r}")
    if boundary not in HEAT_BOUNDARIES:
        raise ValueError(f"boundary must be one of {HEAT_BOUNDARIES}, got {boundary!r}")
    if source is not None and np.ndim(source) and np.shape(source) != field.shape:
        raise ValueError(f"source must be a scalar or have the field's shape {field.shape}, "
                         f"got shape {np.shape(source)}")
    r = alpha * dt / dx**2
    if r > bound:
        raise ValueError(f"unstable time step: alpha*dt/dx**2 = {r:.6g} exceeds the explicit "
                         f"(FTCS) stability bound 1/(2*{field.ndim}) = {bound:.6g}; "
                         f"reduce dt to <= {bound * dx**2 / alpha:.6g}")
    return r


def _update_kernel(ndim: int, r: float) -> np.ndarray:
    """``delta + r * laplacian`` stencil: centre ``1 - 2 d r``, the 2 d neighbours ``r``."""
    k = np.zeros((3,) * ndim)
    centre = (1,) * ndim
    for ax in range(ndim):
        for side in (0, 2):
            k[centre[:ax] + (side,) + centre[ax + 1:]] = r
    k[centre] = 1.0 - 2 * ndim * r
    return k


def _float(field: np.ndarray) -> np.ndarray:
    return field if field.dtype.kind == "f" else field.astype(np.float64)


def _steps(field: np.ndarray, source=None, *, n: int, r: float, dt: float, mode: str,
           cval: float) -> np.ndarray:
    """Run ``n`` explicit steps on one NumPy block, boundary re-applied every step."""
    t = _float(field)
    k = _update_kernel(t.ndim, r).astype(t.dtype)
    heat = None if source is None else np.asarray(source, dtype=t.dtype) * t.dtype.type(dt)
    for _ in range(n):
        t = ndi.correlate(t, k, mode=mode, cval=cval)
        if heat is not None:
            t += heat
    return t


def heat_step(field, alpha: float, dt: float, dx: float, source=None,
              boundary: str = "nearest", cval: float = 0.0):
    """Advance the heat equation by one explicit step (5-point stencil in 2-D, 7 in 3-D).

    ``T' = (1 - 2 d r) T + r * sum(neighbours) + dt * source`` with ``r = alpha dt / dx**2``,
    the seed's update rule (with ``r' q`` written as ``dt * source``).

    Parameters
    ----------
    field : numpy.ndarray or dask.array.Array, shape (ny, nx) or (nz, ny, nx)
        Temperature (any unit, K below). Float dtypes are kept; integers become float64.
    alpha : float
        Thermal diffusivity, m**2/s (any length**2/time units consistent with dt, dx); >= 0.
    dt : float
        Time step, s; > 0.
    dx : float
        Grid spacing, m, the same on every axis; > 0.
    source : None, float or array of the field's shape
        Heating rate ``q / (c_p rho)`` in K/s; ``None`` for none.
    boundary : {"nearest", "wrap", "constant"}
        Insulated (zero-flux Neumann), periodic, or fixed temperature ``cval`` (Dirichlet).
        See the module docstring.
    cval : float
        Wall temperature, K, for ``boundary="constant"``.

    Returns
    -------
    numpy.ndarray or dask.array.Array
        Same type and shape as ``field``; float dtype.

    Raises
    ------
    ValueError
        If ``alpha * dt / dx**2 > 1 / (2 d)`` (unstable; the message names bound and value),
        if ``field`` is not 2-D or 3-D, ``alpha < 0``, ``dt`` or ``dx`` not positive, a value
        is not finite, ``boundary`` is unknown or ``source`` has the wrong shape.
    """
    return diffuse(field, 1, alpha, dt, dx, source=source, boundary=boundary, cval=cval,
                   steps_per_exchange=1)


def diffuse(field, steps: int, alpha: float, dt: float, dx: float, source=None,
            boundary: str = "nearest", cval: float = 0.0, steps_per_exchange: int = 4):
    """Run ``steps`` explicit heat-equation steps, ``steps_per_exchange`` per halo exchange.

    On a Dask field each group of ``k = steps_per_exchange`` steps is one ``map_overlap``
    with halo depth ``k`` on the split axes (Dask boundary ``"none"`` so that blocks at the
    edge apply the boundary every step themselves; ``"periodic"`` for ``wrap``). The graph
    therefore has ``ceil(steps / k)`` layers. Larger ``k`` means fewer exchanges but
    ``2 k`` redundant cells per block side per group; chunks thinner than ``k`` are merged by
    Dask. A NumPy field is advanced eagerly in NumPy.

    Parameters
    ----------
    field : numpy.ndarray or dask.array.Array, shape (ny, nx) or (nz, ny, nx)
        Initial temperature, K. Float dtypes are kept; integers become float64.
    steps : int
        Number of time steps, >= 0. The simulated time is ``steps * dt``.
    alpha, dt, dx, source, boundary, cval
        As for :func:`heat_step`. ``source`` may be a NumPy or Dask array.
    steps_per_exchange : int
        Steps per halo exchange ``k`` (>= 1). Default 4.

    Returns
    -------
    numpy.ndarray or dask.array.Array
        Same type and shape as ``field``; float dtype.

    Raises
    ------
    ValueError
        As for :func:`heat_step`; also if ``steps`` < 0 or ``steps_per_exchange`` < 1.
    """
    for name, value, low in (("steps", steps, 0), ("steps_per_exchange", steps_per_exchange, 1)):
        if not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    is_dask = isinstance(field, da.Array)
    if not is_dask:
        field = np.asarray(field)
    r = _check(field, float(alpha), float(dt), float(dx), source, boundary)
    step = partial(_steps, r=r, dt=float(dt), mode=boundary, cval=float(cval))
    if not is_dask:
        src = None if source is None else np.asarray(source)
        return step(field, src, n=int(steps))

    field = field.map_blocks(_float, dtype=_float(np.empty(0, field.dtype)).dtype)
    src = da.asarray(source) if source is not None and np.ndim(source) > 0 else None
    done = 0
    while done < steps:
        n = min(int(steps_per_exchange), steps - done)
        # An axis shorter than the halo cannot be overlapped: make it one chunk.
        merge = {ax: -1 for ax in range(field.ndim)
                 if len(field.chunks[ax]) > 1 and n >= field.shape[ax]}
        if merge:
            field = field.rechunk(merge)
        depth = {ax: (n if len(c) > 1 else 0) for ax, c in enumerate(field.chunks)}
        bound = {ax: ("periodic" if boundary == "wrap" and d else "none")
                 for ax, d in depth.items()}
        if src is not None:
            src = src if src.chunks == field.chunks else src.rechunk(field.chunks)
            field = da.map_overlap(partial(step, n=n), field, src, depth=depth,
                                   boundary=bound, dtype=field.dtype)
        else:
            field = field.map_overlap(partial(step, source=source, n=n), depth=depth,
                                      boundary=bound, dtype=field.dtype)
        done += n
    return field


def _diffuse_block(block: np.ndarray, steps: int, alpha: float, dt: float, dx: float,
                   boundary: str, cval: float) -> np.ndarray:
    out = np.empty(block.shape, _float(np.empty(0, block.dtype)).dtype)
    for i in range(block.shape[0]):
        for c in range(block.shape[3]):
            out[i, :, :, c] = diffuse(block[i, :, :, c], steps, alpha, dt, dx,
                                      boundary=boundary, cval=cval)
    return out


def diffuse_frames(frames: da.Array, steps: int, alpha: float, dt: float = 1.0,
                   dx: float = 1.0, boundary: str = "nearest", cval: float = 0.0) -> da.Array:
    """Diffuse every frame of a batch as a 2-D temperature field, each channel apart.

    Each frame ``(h, w)`` of each channel is the initial field of :func:`diffuse` (``steps``
    explicit steps, the boundary re-applied every step, no source): the Flink ancestor's
    heat-equation stencil applied to a stream of images. A frame is one block (the
    stream API batches one chunk per frame), so no halo is exchanged.

    Parameters
    ----------
    frames : dask.array.Array, shape (n, h, w, c)
        Integer or float frames; one chunk per frame.
    steps : int
        Time steps per frame, >= 0.
    alpha, dt, dx : float
        Diffusivity (pixels**2 per time unit with ``dx`` = 1 pixel), time step and grid
        spacing; ``alpha * dt / dx**2`` must be <= 1/4 (2-D stability bound).
    boundary : {"nearest", "wrap", "constant"}
        Insulated, periodic or held at ``cval`` (see the module docstring).
    cval : float
        Wall value for ``boundary="constant"``, in the frame's intensity units.

    Returns
    -------
    dask.array.Array
        Same shape and chunks; float64 for integer frames, else the frames' float dtype.

    Raises
    ------
    ValueError
        As for :func:`diffuse` (unstable step, bad boundary, negative steps), or if
        ``frames`` is not 4-D.
    """
    if frames.ndim != 4:
        raise ValueError(f"frames must be (n, h, w, c), got shape {frames.shape}")
    # Check once here (not per block): the same rules on one frame's field.
    diffuse(np.zeros(frames.shape[1:3], frames.dtype), 0, alpha, dt, dx, boundary=boundary,
            cval=cval)
    if not isinstance(steps, (int, np.integer)) or steps < 0:
        raise ValueError(f"steps must be an int >= 0, got {steps!r}")
    dtype = _float(np.empty(0, frames.dtype)).dtype
    return frames.map_blocks(_diffuse_block, steps=int(steps), alpha=float(alpha),
                             dt=float(dt), dx=float(dx), boundary=boundary, cval=float(cval),
                             dtype=dtype)
