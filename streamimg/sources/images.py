"""Image folders on any storage, as rows of Spark's image schema (SPARK-21866) on Dask.

:func:`read_images` lists files through fsspec (local, ``memory://``, ``s3://``, ...) into a
lazy Dask DataFrame with the fields of ``pyspark.ml.image.ImageSchema.columnSchema``;
:func:`image_to_array`/:func:`array_to_image` convert a row (as ``ImageSchema.toNDArray``/
``toImage``); :func:`frames_from_images` stacks rows into the ``(n, h, w, c)`` arrays the
operators and analytics take, so a folder is processed without Kafka. Files are listed,
sampled and named as Spark does by :mod:`streamimg.sources.folders`, which also has the
frame generator of ``streamimg produce`` for a folder.

Unlike Spark's reader (``ImageSchema.decode``, Java's ImageIO), OpenCV decodes: 16-bit
images keep 16 bits (Spark gives CV_8U for all, the low byte of a 16-bit grey sample), grey
with alpha has 4 channels (Spark drops the alpha), WebP and other formats ImageIO lacks
decode, and CMYK JPEGs convert to other BGR values. Everything else (8-bit PNG, palette,
grey, YCbCr JPEG baseline or progressive, BMP, TIFF, GIF), the failed rows and the origins
are the same as Spark 3.5's, field by field (tests/test_spark_images.py).
"""

from __future__ import annotations

from collections import Counter

import cv2
import numpy as np

from streamimg.sources.folders import list_files, spark_origin

COLUMNS = ("origin", "height", "width", "nChannels", "mode", "data")
# OpenCV depth codes (CV_8U=0 ... CV_16F=7); a type number is CV_MAKETYPE(depth, cn) =
# depth + 8 (cn - 1), so CV_8UC3 = 16 and CV_16UC4 = 26 (OpenCV core/hal/interface.h).
_DEPTHS = {np.dtype(np.uint8): 0, np.dtype(np.int8): 1, np.dtype(np.uint16): 2,
           np.dtype(np.int16): 3, np.dtype(np.int32): 4, np.dtype(np.float32): 5,
           np.dtype(np.float64): 6, np.dtype(np.float16): 7}
_DTYPES = {depth: dtype.newbyteorder("<") for dtype, depth in _DEPTHS.items()}
# Decoding costs ~12 ms per MB of JPEG and ~7 ms per MB of PNG (1080p, one core, OpenCV 5),
# so 8 MiB of files per partition is ~60-100 ms of work per task, far above Dask's ~1 ms
# per-task overhead, and ~30-80 MB decoded in memory (JPEG expands ~4-10x).
_PARTITION_BYTES = 8 << 20




def read_images(path: str, recursive: bool = False, sample_ratio: float = 1.0,
                drop_image_failures: bool = False, npartitions: int | None = None,
                seed: int = 0, storage_options: dict | None = None):
    """Read image files into a lazy Dask DataFrame with Spark's image schema.

    The fields of ``pyspark.ml.image.ImageSchema.columnSchema`` (SPARK-21866), as columns:

    - ``origin`` (string): the file's URL, percent-encoded as Spark's (Hadoop's) path URI:
      ``file:///abs/a%20b.png`` for a local file, ``s3://bucket/key``, ``memory:///key``.
    - ``height``, ``width`` (int32): in pixels.
    - ``nChannels`` (int32): 1 (grey), 3 (BGR) or 4 (BGRA) for the usual files.
    - ``mode`` (int32): the OpenCV type number, ``depth + 8 * (nChannels - 1)``:
      CV_8UC1=0, CV_8UC3=16, CV_8UC4=24, CV_16UC1=2, CV_16UC3=18, CV_16UC4=26.
    - ``data`` (bytes, ``large_binary[pyarrow]``): the pixels row by row, channels in
      OpenCV's order (B, G, R[, A]), 16-bit samples little-endian.

    A file that cannot be decoded (corrupt, not an image) gives Spark's invalid-image row
    (``ImageSchema.invalidImageRow``): ``height = width = nChannels = mode = -1`` and
    empty ``data``, unless ``drop_image_failures`` drops it (Spark's ``dropInvalid``); an
    empty file gives no row, as in Spark. Every file is read whatever its suffix; as in
    Spark's listing, files and folders whose name starts with ``.`` or ``_`` (but not
    ``_`` with a ``=``, nor a ``_metadata`` folder) or ends with ``._COPYING_`` are
    skipped. Rows are in path order, indexed 0, 1, ... over the sampled non-empty files
    (a dropped failure leaves a gap).
    Decoding is ``cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)`` (see the module notes). Files
    are read when the frame is computed, by whichever process runs the task: a
    ``memory://`` folder exists only in the process that wrote it, so compute such a frame
    with the threaded scheduler, not on a cluster of worker processes.

    Parameters
    ----------
    path : str
        A folder, a file or a glob (``*``, ``?``, ``[``), as a local path or any fsspec URL.
    recursive : bool
        Also read the files of sub-folders (at any depth).
    sample_ratio : float
        In (0, 1]: keep each file with this probability, decided by a hash of the seed and
        the file's path relative to ``path``, so the same seed keeps the same files on every
        run and storage (Spark's sampling is seeded but order-dependent). The kept fraction
        is ``sample_ratio`` on average, not exactly.
    drop_image_failures : bool
        Drop the rows of files that cannot be decoded.
    npartitions : int, optional
        Number of partitions (at most one per file); by default files are grouped into
        partitions of about 8 MiB of file bytes.
    seed : int
        Seed of the sampling.
    storage_options : dict, optional
        For the fsspec filesystem (s3fs: ``key``, ``secret``, ``endpoint_url``, ...).

    Returns
    -------
    dask.dataframe.DataFrame
        Lazy: listing happens now, reading and decoding when computed.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist (or a glob matches nothing); the message names it.
    ValueError
        If ``sample_ratio`` is not in (0, 1] or ``npartitions`` < 1.
    """
    import dask.dataframe as dd

    if npartitions is not None and npartitions < 1:
        raise ValueError(f"npartitions must be >= 1, got {npartitions}")
    fs, listed = list_files(path, recursive, sample_ratio, seed, storage_options)
    # An empty file gives no row at all, not a failed one: Spark's scan only plans non-empty
    # files (PartitioningAwareFileIndex.listFiles, `isNonEmptyFile`: `f.getLen > 0`,
    # sql/core/.../execution/datasources/PartitioningAwareFileIndex.scala; checked against
    # pyspark 3.5 in tests/test_spark_images.py). A size the storage does not report is read.
    files = [(p, spark_origin(fs, p), int(info.get("size") or 0)) for p, _, info in listed
             if info.get("size") != 0]
    meta = _frame([])
    if not files:
        return dd.from_pandas(meta, npartitions=1)
    batches = _partition(files, npartitions)
    starts = np.cumsum([0] + [len(b) for b in batches]).tolist()
    return dd.from_map(_read_batch, batches, starts[:-1], fs=fs, drop=drop_image_failures,
                       meta=meta, divisions=(*starts[:-1], starts[-1] - 1),
                       label="read-images", enforce_metadata=False)


def image_to_array(row, order: str = "RGB") -> np.ndarray:
    """The pixels of an image-schema row as an ``(height, width, nChannels)`` array.

    Parameters
    ----------
    row : mapping or object with attributes
        A row with the fields of :func:`read_images` (a dict, a pandas row, a namedtuple
        from ``itertuples``, a pyspark ``Row``).
    order : {"RGB", "BGR"}
        Channel order of the result: ``"RGB"`` swaps OpenCV's B and R (RGBA for 4
        channels); ``"BGR"`` keeps the stored order, as Spark's ``ImageSchema.toNDArray``.
        Grey images are the same in both.

    Returns
    -------
    numpy.ndarray
        A new, writable, C-contiguous array of the dtype ``mode`` says (uint8 for CV_8U,
        uint16 for CV_16U, ...), 3-D also for grey images (``nChannels`` = 1).

    Raises
    ------
    ValueError
        If the row is a failed image (``mode`` -1), its mode is not an OpenCV type, its
        ``nChannels`` disagrees with ``mode`` or its data is not ``height * width *
        nChannels`` samples long (the message names the row's origin), or ``order`` is
        unknown.
    """
    _check_order(order)
    origin, h, w, c, mode, data = (_field(row, name) for name in COLUMNS)
    if mode < 0 or h < 0 or w < 0:
        raise ValueError(f"{origin}: a failed image (mode {mode}) has no pixels")
    depth, channels = mode & 7, (mode >> 3) + 1
    if depth not in _DTYPES or channels != c:
        raise ValueError(f"{origin}: mode {mode} is not an OpenCV type with {c} channels")
    dtype = _DTYPES[depth]
    if len(data) != h * w * c * dtype.itemsize:
        raise ValueError(f"{origin}: data has {len(data)} bytes, {h}x{w}x{c} {dtype.name} "
                         f"needs {h * w * c * dtype.itemsize}")
    array = np.frombuffer(data, dtype).reshape(h, w, c)
    return np.array(_swap(array, order), dtype=dtype.newbyteorder("="))


def array_to_image(array: np.ndarray, origin: str = "", order: str = "RGB") -> dict:
    """An image-schema row (a dict with the :func:`read_images` columns) from an array.

    The inverse of :func:`image_to_array`, as Spark's ``ImageSchema.toImage`` (which only
    makes 8-bit rows).

    Parameters
    ----------
    array : numpy.ndarray, shape (height, width) or (height, width, channels)
        1 to 4 channels, in ``order``; dtype uint8, uint16 or another OpenCV depth (int8,
        int16, int32, float16, float32, float64).
    origin : str
        The row's ``origin``.
    order : {"RGB", "BGR"}
        Channel order of ``array`` (stored as BGR(A), the OpenCV order).

    Returns
    -------
    dict
        ``origin``, ``height``, ``width``, ``nChannels``, ``mode`` (int) and ``data``
        (bytes, samples little-endian).

    Raises
    ------
    ValueError
        If ``array`` is not 2-D or 3-D with 1-4 channels, its dtype has no OpenCV depth,
        or ``order`` is unknown.
    """
    _check_order(order)
    array = np.asarray(array)
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or not 1 <= array.shape[2] <= 4:
        raise ValueError(f"array must be (h, w) or (h, w, 1-4 channels), got {array.shape}")
    depth = _DEPTHS.get(array.dtype.newbyteorder("="))
    if depth is None:
        raise ValueError(f"dtype {array.dtype} has no OpenCV depth; use one of "
                         f"{sorted(d.name for d in _DEPTHS)}")
    h, w, c = array.shape
    data = np.ascontiguousarray(_swap(array, order), dtype=_DTYPES[depth]).tobytes()
    return {"origin": origin, "height": h, "width": w, "nChannels": c,
            "mode": depth + 8 * (c - 1), "data": data}


def frames_from_images(df, order: str = "RGB") -> dict:
    """Group the decoded rows of an image DataFrame by shape into ``(n, h, w, c)`` arrays.

    What :func:`streamimg.operators.convolve.convolve`, ``gaussian_blur`` and the analytics
    take, so that they run on a folder without Kafka. Failed rows (``mode`` -1) are left
    out. The sizes are computed now, which decodes every image once; the arrays decode
    again when computed, unless ``df`` was persisted first (``df.persist()``).

    Parameters
    ----------
    df : dask.dataframe.DataFrame
        From :func:`read_images` (or with its columns).
    order : {"RGB", "BGR"}
        Channel order of the arrays (the operators and analytics take RGB).

    Returns
    -------
    dict
        ``{(height, width, channels, numpy.dtype): dask.array.Array}``, each array
        ``(n, height, width, channels)``, rows in the DataFrame's order, one chunk per
        partition of ``df`` holding that shape.

    Raises
    ------
    ValueError
        If ``order`` is unknown, or (when computed) a row's data does not match its sizes.
    """
    import dask
    import dask.array as da

    _check_order(order)
    parts = df.to_delayed()
    counts = dask.compute(*[dask.delayed(_shape_counts)(p) for p in
                            df[["height", "width", "nChannels", "mode"]].to_delayed()])
    groups: dict[tuple, list] = {}
    for part, count in zip(parts, counts, strict=True):
        for (h, w, c, mode), n in sorted(count.items()):
            key = (h, w, c, _DTYPES[mode & 7].newbyteorder("="))
            block = dask.delayed(_stack)(part, (h, w, c, mode), order)
            groups.setdefault(key, []).append(da.from_delayed(block, (n, h, w, c), key[3]))
    return {key: da.concatenate(blocks) for key, blocks in groups.items()}


def _frame(rows: list[tuple]):
    import pandas as pd
    import pyarrow as pa

    columns = list(zip(*rows, strict=True)) or [()] * len(COLUMNS)
    ints = {name: pd.Series(col, dtype=np.int32)
            for name, col in zip(COLUMNS[1:5], columns[1:5], strict=True)}
    return pd.DataFrame({"origin": pd.Series(columns[0], dtype=str), **ints,
                         "data": pd.Series(columns[5], dtype=pd.ArrowDtype(pa.large_binary()))})


def _read_batch(batch: list[tuple[str, str, int]], start: int, *, fs, drop: bool):
    """Rows of one partition: read the files (one ``cat_ranges`` call, concurrent on s3fs)."""
    # Not fs.cat(list): it expands each path as a glob, so a file named "a[1].png" (listed
    # by find) was not found (KeyError). cat_ranges reads the paths as they are.
    contents = fs.cat_ranges([p for p, _, _ in batch], None, None, on_error="raise")
    rows, index = [], []
    for i, ((_, origin, _), content) in enumerate(zip(batch, contents, strict=True)):
        image = _decode(content)
        if image is None and drop:
            continue
        index.append(start + i)
        if image is None:  # Spark's ImageSchema.invalidImageRow
            rows.append((origin, -1, -1, -1, -1, b""))
            continue
        c = 1 if image.ndim == 2 else image.shape[2]
        depth = _DEPTHS[image.dtype]
        rows.append((origin, image.shape[0], image.shape[1], c, depth + 8 * (c - 1),
                     image.astype(_DTYPES[depth], copy=False).tobytes()))
    frame = _frame(rows)
    frame.index = index
    return frame


def _decode(content: bytes) -> np.ndarray | None:
    """OpenCV's decoding (BGR(A), bit depth kept), or None when it cannot decode."""
    if not content:
        return None  # cv2.imdecode raises on an empty buffer
    try:
        image = cv2.imdecode(np.frombuffer(content, np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error:
        return None
    return image if image is not None and image.dtype in _DEPTHS else None



def _partition(files: list, npartitions: int | None) -> list[list]:
    """Consecutive groups: ``npartitions`` of equal count, or ~``_PARTITION_BYTES`` each."""
    if npartitions is not None:
        n = min(npartitions, len(files))
        return [files[i * len(files) // n:(i + 1) * len(files) // n] for i in range(n)]
    batches, size = [[]], 0
    for f in files:
        if batches[-1] and size + f[2] > _PARTITION_BYTES:
            batches.append([])
            size = 0
        batches[-1].append(f)
        size += f[2]
    return batches


def _shape_counts(part) -> Counter:
    good = part[part["mode"] >= 0]
    return Counter(tuple(int(v) for v in row) for row in good.itertuples(index=False))


def _stack(part, shape: tuple[int, int, int, int], order: str) -> np.ndarray:
    h, w, c, mode = shape
    match = part[(part["height"] == h) & (part["width"] == w) & (part["nChannels"] == c)
                 & (part["mode"] == mode)]
    return np.stack([image_to_array(row, order) for row in match.itertuples(index=False)])


def _field(row, name: str):
    return getattr(row, name) if hasattr(row, "_fields") else row[name]  # namedtuple


def _swap(array: np.ndarray, order: str) -> np.ndarray:
    """BGR(A) <-> RGB(A) for ``order="RGB"`` (3 or 4 channels); otherwise unchanged."""
    if order == "BGR" or array.shape[2] < 3:
        return array
    return array[:, :, [2, 1, 0, *range(3, array.shape[2])]]


def _check_order(order: str) -> None:
    if order not in ("RGB", "BGR"):
        raise ValueError(f"order must be 'RGB' or 'BGR', got {order!r}")


__all__ = ["COLUMNS", "array_to_image", "frames_from_images", "image_to_array", "read_images"]
