"""Image folders on any storage: the files Spark's image source would read, and produce's frames.

:func:`list_files` lists a folder (or a glob, or one file) through fsspec (local,
``memory://``, ``s3://``, ...) in path order, leaving out the names Spark's listing hides
and sampling each file by a seeded hash of its relative path; :func:`spark_origin` names a
file exactly as Spark's ``origin`` does. :func:`streamimg.sources.images.read_images`
builds Spark's image schema on them; :func:`image_frames` is the frame generator of
``streamimg produce`` for a folder (the same files, those with an image suffix), and
:func:`count_images` its count.
"""

from __future__ import annotations

import hashlib
import io
import posixpath
import time
import unicodedata
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

import numpy as np

if TYPE_CHECKING:  # video imports PyAV and the Kafka client: not needed to list images
    from streamimg.sources.video import SourceFrame

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


def image_frames(source: str | Path, *, recursive: bool = False, sample_ratio: float = 1.0,
                 seed: int = 0, frame_step: int = 1, limit: int | None = None,
                 keep_failed: bool = False,
                 on_skip: Callable[[str, str, str], None] | None = None,
                 storage_options: dict | None = None) -> Iterator[SourceFrame]:
    """Read the images of a folder, local or any fsspec URL, as RGB uint8 frames.

    The folder is listed and sampled by :func:`list_files` (hidden ``.``/``_`` names
    skipped, ``recursive``, the seeded per-file ``sample_ratio``), then only files with a
    suffix in ``IMAGE_SUFFIXES`` are kept, in path order (the path relative to ``source``
    when recursive), every ``frame_step``-th of them. A frame's ``index`` is the file's
    position in that order, so a skipped file leaves a gap. Pillow decodes: alpha dropped,
    grey expanded, 16-bit samples cut to 8.

    Parameters
    ----------
    source : str or Path
        A local folder or an fsspec URL of one (``file://``, ``memory://``, ``s3://``, ...).
    recursive, sample_ratio, seed, storage_options
        As for :func:`streamimg.sources.images.read_images`.
    frame_step : int
        Keep every ``frame_step``-th file (1 keeps all).
    limit : int, optional
        Stop after this many frames yielded (failed ones included when ``keep_failed``).
    keep_failed : bool
        Yield a file that cannot be read or decoded as a failed frame: ``image`` None,
        ``error`` ``"cannot decode image: ..."`` (or ``"cannot read file: ..."``).
    on_skip : callable, optional
        ``on_skip(path, name, reason)`` for each such file, which is then skipped: ``path``
        local (or the URL), ``name`` relative to ``source``. Without it (and without
        ``keep_failed``) such a file raises.

    Yields
    ------
    SourceFrame
        ``image`` (h, w, 3) uint8 RGB; ``timestamp_ms`` the file's modification time in ms
        since the epoch (now when the storage records none); ``origin`` the file's URL as
        :func:`~streamimg.sources.images.read_images` gives it.

    Raises
    ------
    FileNotFoundError
        If ``source`` is not an existing folder; the message names it.
    ValueError
        If ``frame_step`` < 1, ``sample_ratio`` is not in (0, 1], both ``keep_failed`` and
        ``on_skip`` are given, or a file cannot be decoded (naming it) and neither is.
    """
    from PIL import Image, UnidentifiedImageError

    from streamimg.sources.video import SourceFrame

    if frame_step < 1:
        raise ValueError(f"frame_step must be >= 1, got {frame_step}")
    if keep_failed and on_skip is not None:
        raise ValueError("give keep_failed or on_skip, not both")
    fs, files = _image_files(source, recursive, sample_ratio, seed, storage_options)
    kept = 0
    for i, (p, rel, info) in enumerate(files[::frame_step]):
        origin, ts = spark_origin(fs, p), _mtime_ms(info)
        try:
            content = fs.cat_file(p)
        except OSError as exc:
            error = f"cannot read file: {exc}"
        else:
            try:
                with Image.open(io.BytesIO(content)) as im:
                    image = np.asarray(im.convert("RGB"))
                error = None
            except UnidentifiedImageError:  # its message names a BytesIO object's address
                error = f"cannot decode image: not a format Pillow reads ({len(content)} bytes)"
            except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
                error = f"cannot decode image: {exc}"
        if error is None:
            yield SourceFrame(i, ts, image, origin=origin)
        elif keep_failed:
            yield SourceFrame(i, ts, None, origin=origin, error=error)
        elif on_skip is not None:
            on_skip(_shown(fs, p), rel, error)
            continue
        else:
            raise ValueError(f"{_shown(fs, p)}: {error}")
        kept += 1
        if limit is not None and kept >= limit:
            return


def count_images(source: str | Path, *, recursive: bool = False, sample_ratio: float = 1.0,
                 seed: int = 0, frame_step: int = 1, limit: int | None = None,
                 storage_options: dict | None = None) -> int:
    """How many frames :func:`image_frames` yields for these arguments, decodable or not.

    Lists the folder (again) and reads no file: a file that fails to decode is counted.

    Raises
    ------
    FileNotFoundError, ValueError
        As :func:`image_frames`.
    """
    if frame_step < 1:
        raise ValueError(f"frame_step must be >= 1, got {frame_step}")
    files = _image_files(source, recursive, sample_ratio, seed, storage_options)[1]
    total = len(files[::frame_step])
    return total if limit is None else max(0, min(total, limit))


def list_files(path: str | Path, recursive: bool, sample_ratio: float, seed: int,
               storage_options: dict | None) -> tuple[object, list[tuple[str, str, dict]]]:
    """The files Spark's image source reads: ``(fs, [(fs path, relative path, fsspec info)])``.

    ``path`` is a folder (its files, or with ``recursive`` its whole tree), a glob or one
    file, local or an fsspec URL. In path order; the names Spark's listing hides skipped
    (:func:`_spark_hides`), then each file kept when its :func:`_sampled` number is below
    ``sample_ratio``.

    Raises
    ------
    FileNotFoundError
        If nothing is at ``path`` (naming it).
    ValueError
        If ``sample_ratio`` is not in (0, 1].
    """
    import fsspec

    if not 0 < sample_ratio <= 1:
        raise ValueError(f"sample_ratio must be in (0, 1], got {sample_ratio}")
    fs, root = fsspec.core.url_to_fs(str(path), **(storage_options or {}))
    magic = [root.find(c) for c in "*?[" if c in root]
    if magic:
        base = root[:min(magic)].rpartition("/")[0]
        found = {p: i for p, i in fs.glob(root, detail=True).items() if i["type"] == "file"}
        if not found:
            raise FileNotFoundError(f"no image file matches {path}")
    elif fs.isdir(root):
        base = root.rstrip("/")
        found = fs.find(root, maxdepth=None if recursive else 1, detail=True)
    elif fs.isfile(root):
        base, found = posixpath.dirname(root), {root: fs.info(root)}
    else:
        raise FileNotFoundError(f"image path {path} does not exist")
    files = []
    for p in sorted(found):
        rel = posixpath.relpath(p, base) if base else p.lstrip("/")
        if _spark_hides(rel):
            continue
        if sample_ratio == 1 or _sampled(rel, seed) < sample_ratio:
            files.append((p, rel, found[p]))
    return fs, files


def _image_files(source: str | Path, recursive: bool, sample_ratio: float, seed: int,
                 storage_options: dict | None) -> tuple[object, list[tuple[str, str, dict]]]:
    """:func:`list_files` of a folder, only the names with an ``IMAGE_SUFFIXES`` suffix."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(str(source), **(storage_options or {}))
    if not fs.isdir(root):
        raise FileNotFoundError(f"image folder {source} does not exist")
    fs, files = list_files(source, recursive, sample_ratio, seed, storage_options)
    return fs, [f for f in files if posixpath.splitext(f[1])[1].lower() in IMAGE_SUFFIXES]


def _mtime_ms(info: dict) -> int:
    """A file's modification time (ms since the epoch) from its fsspec info; now if none."""
    t = info.get("mtime", info.get("LastModified", info.get("created")))
    if isinstance(t, datetime):
        t = t.timestamp()
    try:
        return int(float(t) * 1000)
    except (TypeError, ValueError):
        return int(time.time() * 1000)


def _shown(fs, path: str) -> str:
    """A file as messages show it: the local path, or the URL on other storage."""
    from fsspec.implementations.local import LocalFileSystem

    return path if isinstance(fs, LocalFileSystem) else fs.unstrip_protocol(path)


def _sampled(rel: str, seed: int) -> float:
    """A uniform number in [0, 1) fixed by the seed and the relative path (BLAKE2b)."""
    digest = hashlib.blake2b(f"{seed}\0{rel}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2.0 ** 64


def _spark_hides(rel: str) -> bool:
    """Whether Spark's listing leaves out the file at ``rel`` (``/``-separated, below the root).

    Spark 3.5 (checked with pyspark in tests/test_spark_images.py): each listed name passes
    ``HadoopFSUtils.shouldFilterOutPathName`` (core/.../util/HadoopFSUtils.scala): out if it
    starts with ``.``, ends with ``._COPYING_`` or starts with ``_`` without a ``=`` (a
    partition folder ``_k=v`` stays), except names starting with ``_metadata`` or
    ``_common_metadata`` (so a folder ``_metadata/`` is read). A file must also be a data
    path (``PartitioningAwareFileIndex.isDataPath``: not ``.``, not ``_`` without ``=``).
    """
    *folders, name = rel.split("/")

    def hidden(part: str) -> bool:
        return (part.startswith(".") or part.endswith("._COPYING_")
                or (part.startswith("_") and "=" not in part))

    return hidden(name) or any(
        hidden(f) and not f.startswith(("_metadata", "_common_metadata")) for f in folders)


def spark_origin(fs, path: str) -> str:
    r"""The file URL exactly as Spark's image source gives it in ``origin``.

    Spark 3.5 (``ImageFileFormat.buildReader``: ``origin = file.urlEncodedPath``, the
    ``Path.toUri.toString`` of the listed file, a ``SparkPath``) gives a local file as
    ``file:///abs/path``: Hadoop qualifies paths with the local filesystem's URI
    ``file:///`` (an empty authority). (``file:/abs/path``, which this function gave before
    issue 11, is the form of the ``path`` column of Spark's ``binaryFile`` source instead.)
    Hadoop's ``Path`` builds the URI with ``java.net.URI``'s multi-argument constructor,
    which percent-encodes (UTF-8) the ASCII characters outside unreserved, punct, ``/`` and
    ``@`` (space, ``"#%<>?[\]^`{|}``, controls) and keeps non-ASCII characters as they
    are, unless they are control or space characters (``Character.isISOControl``,
    ``isSpaceChar``). Same rule for every storage (``s3://``, ``memory://``).
    """
    return "".join(_uri_char(c) for c in fs.unstrip_protocol(path))


def _uri_char(c: str) -> str:
    """One character of a path as ``java.net.URI`` quotes it (see :func:`spark_origin`)."""
    if c < "\x80":
        return quote(c, safe="/:@!$&'()*+,;=~")
    if unicodedata.category(c) in ("Zs", "Zl", "Zp") or c <= "\x9f":  # space, C1 control
        return quote(c, safe="")
    return c


__all__ = ["IMAGE_SUFFIXES", "count_images", "image_frames", "list_files", "spark_origin"]
