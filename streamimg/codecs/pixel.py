"""Pixel messages: the seed's ``name;frame;x;y;v`` text records and a compact binary twin.

The seed (a Flink job) streamed every pixel as one Kafka message ``name;frame;x;y;v`` and
parsed it with ``s.split(';')``. This module keeps that format, defines its domain strictly,
and adds a fixed-layout binary variant carrying the same five fields.

Fields and coordinate convention
--------------------------------
- ``name``: image or stream name, non-empty UTF-8 without ``';'``.
- ``frame``: frame index, integer in ``[0, 2**32 - 1]``.
- ``x``: **column** index, integer in ``[0, 2**32 - 1]``, growing to the right.
- ``y``: **row** index, integer in ``[0, 2**32 - 1]``, growing downwards, so the pixel is
  ``frame2d[y, x]`` (NumPy order). The seed used x and y loosely; this is the rule here.
- ``v``: the pixel value, a finite float (NaN and infinities are refused).

Text layout (UTF-8): ``f"{name};{frame};{x};{y};{v!r}"``, integers as plain ASCII decimal
digits (no sign, no spaces), ``v`` as a decimal literal (Python's shortest round-trip
``repr``, so a float64 survives text exactly). One trailing newline (LF or CR LF) is
accepted on decode.

Binary layout (big-endian, ``24 + n`` bytes for an ``n``-byte name)::

    offset  size  field
    0       1     magic 0xFF (never a byte of UTF-8 text, so decode_pixel can tell them apart)
    1       1     version, 1
    2       2     u16 n, byte length of the UTF-8 name (1..65535)
    4       n     name, UTF-8
    4+n     4     u32 frame
    8+n     4     u32 x (column)
    12+n    4     u32 y (row)
    16+n    8     f64 v (IEEE 754 binary64)
"""

from __future__ import annotations

import math
import re
import struct
from typing import NamedTuple

import numpy as np

__all__ = [
    "BINARY_MAGIC",
    "BINARY_VERSION",
    "MAX_INDEX",
    "Pixel",
    "PixelDecodeError",
    "decode_pixel",
    "decode_pixel_binary",
    "decode_pixel_text",
    "encode_pixel_binary",
    "encode_pixel_text",
]

BINARY_MAGIC = 0xFF
BINARY_VERSION = 1
#: Largest frame, x and y (u32 in the binary layout; text keeps the same domain).
MAX_INDEX = 2**32 - 1

_HEAD = struct.Struct(">BBH")
_BODY = struct.Struct(">IIId")
_INT_RE = re.compile(r"[0-9]+", re.ASCII)
_FLOAT_RE = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?", re.ASCII)
_SHOWN = 80  # characters of an offending record quoted in error messages


class Pixel(NamedTuple):
    """One pixel message.

    Attributes
    ----------
    name : str
        Image or stream name; non-empty, no ``';'``.
    frame : int
        Frame index, ``0 <= frame <= 2**32 - 1``.
    x : int
        Column index (0 = leftmost), ``0 <= x <= 2**32 - 1``.
    y : int
        Row index (0 = top), ``0 <= y <= 2**32 - 1``.
    v : float
        Pixel value (intensity units of the source), finite.
    """

    name: str
    frame: int
    x: int
    y: int
    v: float


class PixelDecodeError(ValueError):
    """A malformed pixel record.

    The message names the field that was wrong and shows the offending value and (the start
    of) the record.

    Attributes
    ----------
    field : str
        ``"name"``, ``"frame"``, ``"x"``, ``"y"``, ``"v"``, or ``"record"``, ``"magic"``,
        ``"version"`` for problems with the record as a whole.
    value : object
        The offending value as found in the record.
    """

    def __init__(self, field: str, value, problem: str, record=None, show_value: bool = True):
        self.field = field
        self.value = value
        msg = f"bad pixel record: {field} {problem}" + (f", got {value!r}" if show_value else "")
        if record is not None:
            shown = record[:_SHOWN]
            msg += f" in {shown!r}" + ("..." if len(record) > _SHOWN else "")
        super().__init__(msg)


def _check_name(name, err):
    if not isinstance(name, str) or not name:
        raise err("name", name, "must be a non-empty string")
    if ";" in name:
        raise err("name", name, "must not contain ';'")
    try:
        raw = name.encode("utf-8")
    except UnicodeEncodeError:
        raise err("name", name, "is not encodable as UTF-8") from None
    if len(raw) > 0xFFFF:
        raise err("name", f"<{len(raw)} bytes>", "must be at most 65535 UTF-8 bytes")
    return raw


def _check_index(field: str, value, err) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise err(field, value, "must be an int")
    if value < 0:
        raise err(field, value, "must be non-negative")
    if value > MAX_INDEX:
        raise err(field, value, f"must be <= {MAX_INDEX}")
    return int(value)


def _check_value(value, err) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise err("v", value, "must be a real number") from None
    if not math.isfinite(v):
        raise err("v", value, "must be finite")
    return v


def _encode_error(field, value, problem):
    return ValueError(f"cannot encode pixel: {field} {problem}, got {value!r}")


def _validate(name, frame, x, y, v) -> tuple[bytes, int, int, int, float]:
    raw = _check_name(name, _encode_error)
    frame, x, y = (_check_index(f, val, _encode_error)
                   for f, val in (("frame", frame), ("x", x), ("y", y)))
    return raw, frame, x, y, _check_value(v, _encode_error)


def encode_pixel_text(name: str, frame: int, x: int, y: int, v: float) -> bytes:
    """Encode one pixel as the seed's UTF-8 text record ``name;frame;x;y;v``.

    Parameters
    ----------
    name : str
        Non-empty, without ``';'``.
    frame, x, y : int
        Frame index, column and row, each in ``[0, 2**32 - 1]``.
    v : float
        Finite value; written with ``repr`` so that it decodes to the same float64.

    Returns
    -------
    bytes
        E.g. ``b"cam0;7;3;2;0.5"``.

    Raises
    ------
    ValueError
        Naming the field, if a field is outside its domain.
    """
    _, frame, x, y, v = _validate(name, frame, x, y, v)
    return f"{name};{frame};{x};{y};{v!r}".encode()


def encode_pixel_binary(name: str, frame: int, x: int, y: int, v: float) -> bytes:
    """Encode one pixel in the binary layout of the module docstring (``24 + len(name)``).

    Parameters
    ----------
    name : str
        Non-empty, without ``';'``, at most 65535 UTF-8 bytes.
    frame, x, y : int
        Frame index, column and row, each in ``[0, 2**32 - 1]``.
    v : float
        Finite value, stored as big-endian float64.

    Returns
    -------
    bytes

    Raises
    ------
    ValueError
        Naming the field, if a field is outside its domain.
    """
    raw, frame, x, y, v = _validate(name, frame, x, y, v)
    return _HEAD.pack(BINARY_MAGIC, BINARY_VERSION, len(raw)) + raw + _BODY.pack(frame, x, y, v)


def _parse_index(field: str, text: str, record: str) -> int:
    if not _INT_RE.fullmatch(text):
        if text.startswith("-") and _INT_RE.fullmatch(text[1:]):
            raise PixelDecodeError(field, text, "must be non-negative", record)
        raise PixelDecodeError(field, text, "is not a decimal integer", record)
    value = int(text)
    if value > MAX_INDEX:
        raise PixelDecodeError(field, text, f"must be <= {MAX_INDEX}", record)
    return value


def decode_pixel_text(value: bytes | bytearray | memoryview | str) -> Pixel:
    """Decode one text record ``name;frame;x;y;v``.

    Parameters
    ----------
    value : bytes-like or str
        UTF-8 text, optionally ending with one newline (LF or CR LF).

    Returns
    -------
    Pixel

    Raises
    ------
    PixelDecodeError
        If the bytes are not UTF-8, there are not exactly 5 fields, the name is empty,
        ``frame``/``x``/``y`` is not a plain non-negative decimal integer <= 2**32 - 1, or
        ``v`` is not a decimal number or not finite. The message names the field and shows
        the offending value.
    """
    if isinstance(value, str):
        text = value
    else:
        raw = bytes(value)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise PixelDecodeError("record", raw[:_SHOWN], f"is not valid UTF-8 ({exc.reason} "
                                   f"at byte {exc.start})") from None
    record = text
    if text.endswith("\n"):
        text = text[:-2] if text.endswith("\r\n") else text[:-1]
    parts = text.split(";")
    if len(parts) != 5:
        raise PixelDecodeError("record", record[:_SHOWN], f"has {len(parts)} ';'-separated "
                               "fields, expected 5 (name;frame;x;y;v)")
    name, frame, x, y, v = parts
    if not name:
        raise PixelDecodeError("name", name, "must not be empty", record)
    frame_i, x_i, y_i = (_parse_index(f, t, record)
                         for f, t in (("frame", frame), ("x", x), ("y", y)))
    if not _FLOAT_RE.fullmatch(v):
        low = v.strip().lower().lstrip("+-")
        problem = "must be finite" if low in ("nan", "inf", "infinity") else \
            "is not a decimal number"
        raise PixelDecodeError("v", v, problem, record)
    v_f = float(v)
    if not math.isfinite(v_f):  # e.g. 1e999 overflows to inf
        raise PixelDecodeError("v", v, "must be finite (overflows float64)", record)
    return Pixel(name, frame_i, x_i, y_i, v_f)


def decode_pixel_binary(value: bytes | bytearray | memoryview) -> Pixel:
    """Decode one binary record (layout in the module docstring).

    Parameters
    ----------
    value : bytes-like
        Exactly one record, ``24 + n`` bytes.

    Returns
    -------
    Pixel

    Raises
    ------
    PixelDecodeError
        If the record is shorter than its header or its declared length (truncated), longer
        (trailing bytes), has a bad magic byte or an unknown version, its name is empty, not
        UTF-8 or contains ``';'``, or ``v`` is NaN or infinite.
    """
    raw = bytes(value)
    if len(raw) < _HEAD.size:
        raise PixelDecodeError("record", raw, f"is truncated: {len(raw)} bytes, the header "
                               f"alone needs {_HEAD.size}")
    magic, version, n = _HEAD.unpack_from(raw)
    if magic != BINARY_MAGIC:
        raise PixelDecodeError("magic", f"0x{magic:02X}", f"must be 0x{BINARY_MAGIC:02X}", raw)
    if version != BINARY_VERSION:
        raise PixelDecodeError("version", version, f"is not supported (only "
                               f"{BINARY_VERSION})", raw)
    expected = _HEAD.size + n + _BODY.size
    if len(raw) < expected:
        raise PixelDecodeError("record", len(raw), f"is truncated: {len(raw)} bytes, expected "
                               f"{expected} for a {n}-byte name", raw, show_value=False)
    if len(raw) > expected:
        raise PixelDecodeError("record", len(raw), f"has {len(raw) - expected} trailing bytes: "
                               f"{len(raw)} bytes, expected {expected} for a {n}-byte name",
                               raw, show_value=False)
    name_raw = raw[_HEAD.size:_HEAD.size + n]
    try:
        name = name_raw.decode("utf-8")
    except UnicodeDecodeError:
        raise PixelDecodeError("name", name_raw, "is not valid UTF-8", raw) from None
    if not name or ";" in name:
        raise PixelDecodeError("name", name, "must be non-empty without ';'", raw)
    frame, x, y, v = _BODY.unpack_from(raw, _HEAD.size + n)
    if not math.isfinite(v):
        raise PixelDecodeError("v", v, "must be finite", raw)
    return Pixel(name, frame, x, y, v)


def decode_pixel(value: bytes | bytearray | memoryview | str) -> Pixel:
    """Decode a text or binary pixel record, telling them apart by the first byte.

    A binary record starts with 0xFF, which never occurs in UTF-8; anything else is text.

    Parameters
    ----------
    value : bytes-like or str
        One record; ``str`` is always text.

    Returns
    -------
    Pixel

    Raises
    ------
    PixelDecodeError
        If the record is empty or malformed (see :func:`decode_pixel_text` and
        :func:`decode_pixel_binary`).
    """
    if isinstance(value, str):
        return decode_pixel_text(value)
    raw = bytes(value)
    if not raw:
        raise PixelDecodeError("record", raw, "is empty")
    return decode_pixel_binary(raw) if raw[0] == BINARY_MAGIC else decode_pixel_text(raw)
