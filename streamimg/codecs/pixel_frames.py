"""Frames to pixel messages and back: one message per pixel (:mod:`streamimg.codecs.pixel`).

:func:`frame_to_pixels` splits a 2-D frame into its pixel messages in row-major order
(text or binary layout); :func:`pixels_to_arrays` assembles messages, in any order, into
one array per ``(name, frame)``. The message format and its checks live in
:mod:`streamimg.codecs.pixel`; the daemon's streaming assembly is
:mod:`streamimg.assembly`.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from streamimg.codecs.pixel import (
    BINARY_MAGIC,
    BINARY_VERSION,
    MAX_INDEX,
    Pixel,
    _check_index,
    _check_name,
    _encode_error,
    decode_pixel,
)

__all__ = ["frame_to_pixels", "pixels_to_arrays"]


def frame_to_pixels(name: str, frame_index: int, frame2d, binary: bool = False) -> list[bytes]:
    """Split a 2-D frame into one pixel message per pixel, in row-major order.

    Message ``i`` is the pixel ``frame2d[y, x]`` with ``y = i // width`` (row) and
    ``x = i % width`` (column). Binary records are built in one NumPy structured array.

    Parameters
    ----------
    name : str
        Non-empty, without ``';'``.
    frame_index : int
        In ``[0, 2**32 - 1]``.
    frame2d : array_like, shape (height, width)
        Real values (any real dtype; converted to float64), all finite, with ``height`` and
        ``width`` at most 2**32.
    binary : bool
        Binary layout if true, text otherwise.

    Returns
    -------
    list of bytes
        ``height * width`` messages.

    Raises
    ------
    ValueError
        If ``frame2d`` is not 2-D or not real-numeric, holds a NaN or an infinity (the
        message gives its row and column), or ``name``/``frame_index`` is invalid.
    """
    raw = _check_name(name, _encode_error)
    frame_index = _check_index("frame", frame_index, _encode_error)
    arr = np.asarray(frame2d)
    if arr.ndim != 2 or arr.dtype.kind not in "biuf":
        raise ValueError(f"frame2d must be a 2-D real array, got shape {arr.shape} and dtype "
                         f"{arr.dtype}")
    if max(arr.shape, default=0) > MAX_INDEX + 1:
        raise ValueError(f"frame2d shape {arr.shape} exceeds the u32 coordinate range")
    vals = arr.astype(np.float64)
    bad = np.argwhere(~np.isfinite(vals))
    if len(bad):
        y, x = (int(i) for i in bad[0])
        raise ValueError(f"frame2d has a non-finite value {vals[y, x]!r} at row y={y}, "
                         f"column x={x}")
    height, width = vals.shape
    if not binary:
        prefix = f"{name};{frame_index};"
        return [f"{prefix}{i % width};{i // width};{v!r}".encode()
                for i, v in enumerate(vals.ravel().tolist())]
    rec_dtype = np.dtype([("magic", "u1"), ("version", "u1"), ("n", ">u2"),
                          ("name", f"V{len(raw)}"), ("frame", ">u4"), ("x", ">u4"),
                          ("y", ">u4"), ("v", ">f8")])
    rec = np.zeros(vals.size, dtype=rec_dtype)
    rec["magic"], rec["version"], rec["n"] = BINARY_MAGIC, BINARY_VERSION, len(raw)
    rec["name"] = np.void(raw)
    rec["frame"] = frame_index
    rows, cols = np.divmod(np.arange(vals.size, dtype=np.int64), width)
    rec["x"], rec["y"], rec["v"] = cols, rows, vals.ravel()
    buf, size = rec.tobytes(), rec_dtype.itemsize
    return [buf[i:i + size] for i in range(0, len(buf), size)]


def pixels_to_arrays(records: Iterable[bytes | str | Pixel],
                     shape: tuple[int, int] | None = None,
                     fill: float = np.nan) -> dict[tuple[str, int], np.ndarray]:
    """Assemble pixel messages (text, binary or :class:`Pixel`) into one array per frame.

    Parameters
    ----------
    records : iterable of bytes, str or Pixel
        Messages in any order, possibly from several names and frames. Bytes and str are
        decoded with :func:`decode_pixel`.
    shape : (height, width), optional
        Frame shape. Default: ``(max y + 1, max x + 1)`` of each frame's pixels.
    fill : float
        Value of pixels that no message covered. Default NaN.

    Returns
    -------
    dict
        ``{(name, frame): array}``, each a float64 array of shape ``(height, width)`` with
        ``array[y, x] = v``. When a coordinate repeats, the last message wins.

    Raises
    ------
    PixelDecodeError
        If a message is malformed.
    ValueError
        If a pixel lies outside ``shape``.
    """
    groups: dict[tuple[str, int], tuple[list[int], list[int], list[float]]] = {}
    for rec in records:
        p = rec if isinstance(rec, Pixel) else decode_pixel(rec)
        xs, ys, vs = groups.setdefault((p.name, p.frame), ([], [], []))
        xs.append(p.x)
        ys.append(p.y)
        vs.append(p.v)
    out = {}
    for key, (xs, ys, vs) in groups.items():
        x, y, v = np.array(xs, np.int64), np.array(ys, np.int64), np.array(vs, np.float64)
        height, width = (int(y.max()) + 1, int(x.max()) + 1) if shape is None else shape
        outside = (y >= height) | (x >= width)
        if outside.any():
            i = int(np.argmax(outside))
            raise ValueError(f"pixel (x={x[i]}, y={y[i]}) of {key!r} lies outside shape "
                             f"(height, width) = {(height, width)}")
        idx = y * width + x
        # Keep the last occurrence of each coordinate: unique() on the reversed index
        # returns each first hit, i.e. the last one in message order.
        _, first_rev = np.unique(idx[::-1], return_index=True)
        keep = len(idx) - 1 - first_rev
        arr = np.full(height * width, fill, dtype=np.float64)
        arr[idx[keep]] = v[keep]
        out[key] = arr.reshape(height, width)
    return out
