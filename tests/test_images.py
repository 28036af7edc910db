"""Image folders read with Spark's image schema (SPARK-21866), checked against OpenCV itself.

Real files of every kind (written by OpenCV and tifffile), read locally, from fsspec's memory
filesystem and from a real moto S3 server on loopback. Each row is compared field by field
with what ``cv2.imdecode(..., IMREAD_UNCHANGED)`` gives for the file. (A comparison with
pyspark's own ``spark.read.format("image")`` on a JVM is not part of this file.)
"""

from __future__ import annotations

import contextlib
import re
import uuid
from pathlib import Path

import cv2
import dask
import dask.array as da
import fsspec
import numpy as np
import pytest
import tifffile

import streamimg
from streamimg.operators.blur import gaussian_blur
from streamimg.operators.convolve import convolve
from streamimg.operators.kernels import box
from streamimg.sources.images import array_to_image, image_to_array, read_images
from tests.harness.s3 import CREDENTIALS, MotoS3

pytestmark = pytest.mark.timeout(120)

# name -> (height, width, nChannels, mode) that OpenCV gives; None: Spark's failed row.
EXPECTED = {"grey8.png": (5, 7, 1, 0), "rgb8.png": (5, 7, 3, 16), "rgba8.png": (5, 7, 4, 24),
            "grey16.png": (6, 3, 1, 2), "rgb16.png": (6, 3, 3, 18), "photo.jpg": (16, 24, 3, 16),
            "corrupt.png": None, "notes.txt": None}  # an empty file gives no row (Spark skips it)
NESTED = {"sub/rgba16.tif": (4, 5, 4, 26), "sub/deeper/grey8b.png": (5, 7, 1, 0)}
FAILED = (-1, -1, -1, -1)


@pytest.fixture
def folder(tmp_path) -> Path:
    """A folder of every kind of file, plus files Spark's listing skips (hidden, ``_``)."""
    rng = np.random.default_rng(7)
    root = tmp_path / "images"
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / ".cache").mkdir()
    u8 = lambda *shape: rng.integers(0, 256, shape, dtype=np.uint8)  # noqa: E731
    u16 = lambda *shape: rng.integers(0, 65536, shape, dtype=np.uint16)  # noqa: E731
    for name, image in [("grey8.png", u8(5, 7)), ("rgb8.png", u8(5, 7, 3)),
                        ("rgba8.png", u8(5, 7, 4)), ("grey16.png", u16(6, 3)),
                        ("rgb16.png", u16(6, 3, 3)), ("sub/deeper/grey8b.png", u8(5, 7)),
                        (".hidden.png", u8(5, 7)), (".cache/c.png", u8(5, 7))]:
        assert cv2.imwrite(str(root / name), image)
    smooth = np.linspace(0, 255, 16 * 24 * 3).reshape(16, 24, 3).astype(np.uint8)
    assert cv2.imwrite(str(root / "photo.jpg"), smooth)
    tifffile.imwrite(root / "sub" / "rgba16.tif", u16(4, 5, 4), photometric="rgb",
                     extrasamples=["unassalpha"])
    good = (root / "rgb8.png").read_bytes()
    (root / "corrupt.png").write_bytes(good[:40] + bytes(len(good) - 40))  # header, no data
    (root / "notes.txt").write_text("not an image\n")
    (root / "empty.png").write_bytes(b"")
    (root / "_SUCCESS").write_bytes(b"")
    return root


def opencv(path: Path) -> np.ndarray | None:
    return cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_UNCHANGED)


def check_rows(rows, root: Path, expected: dict, origin_of) -> None:
    """Every field of every row against OpenCV's decoding of the same local file."""
    assert list(rows.columns) == ["origin", "height", "width", "nChannels", "mode", "data"]
    assert all(str(rows[c].dtype) == "int32" for c in ("height", "width", "nChannels", "mode"))
    assert list(rows["origin"]) == [origin_of(name) for name in sorted(expected)]
    for name, row in zip(sorted(expected), rows.itertuples(index=False), strict=True):
        sizes = (row.height, row.width, row.nChannels, row.mode)
        if expected[name] is None:
            assert sizes == FAILED and row.data == b"", name
            continue
        image = opencv(root / name)
        assert sizes == expected[name], name
        assert row.data == np.ascontiguousarray(image).astype(image.dtype.newbyteorder("<")
                                                              ).tobytes(), name
        assert np.array_equal(image_to_array(row, "BGR"), image.reshape(row.height, row.width,
                                                                         row.nChannels))


def test_local_folder_every_field_against_opencv(folder):
    df = read_images(str(folder))
    rows = df.compute()
    check_rows(rows, folder, EXPECTED, lambda name: f"file://{folder / name}")
    assert list(rows.index) == list(range(len(EXPECTED)))
    bgr = cv2.imread(str(folder / "rgb8.png"), cv2.IMREAD_UNCHANGED)  # OpenCV's own order
    assert rows.loc[rows.origin.str.endswith("rgb8.png"), "data"].iloc[0] == bgr.tobytes()
    # the same rows whatever the partitioning, and via the lazy top-level export
    again = streamimg.read_images(str(folder) + "/", npartitions=4)
    assert again.npartitions == 4
    assert again.compute().equals(rows)
    one = read_images(str(folder / "rgba8.png")).compute()  # a single file
    check_rows(one, folder, {"rgba8.png": EXPECTED["rgba8.png"]}, lambda n: f"file://{folder / n}")
    globbed = read_images(str(folder / "*8.png")).compute()
    assert [o.rsplit("/", 1)[1] for o in globbed.origin] == ["grey8.png", "rgb8.png",
                                                             "rgba8.png"]


def test_recursive_and_dropping_failures(folder):
    everything = {**EXPECTED, **NESTED}
    rows = read_images(str(folder), recursive=True, npartitions=3).compute()
    check_rows(rows, folder, everything, lambda name: f"file://{folder / name}")
    kept = read_images(str(folder), recursive=True, drop_image_failures=True).compute()
    good = {k: v for k, v in everything.items() if v is not None}
    check_rows(kept, folder, good, lambda name: f"file://{folder / name}")
    # a dropped failure leaves a gap in the index, which counts files
    assert list(kept.index) == [i for i, k in enumerate(sorted(everything)) if k in good]
    none = read_images(str(folder / "notes.txt"), drop_image_failures=True).compute()
    assert len(none) == 0 and list(none.columns) == list(rows.columns)


def test_origin_is_a_percent_encoded_url(tmp_path):
    odd = tmp_path / "a b#c"
    odd.mkdir()
    assert cv2.imwrite(str(odd / "x%y.png"), np.zeros((2, 2), np.uint8))
    rows = read_images(str(odd)).compute()
    assert list(rows.origin) == [f"file://{tmp_path}/a%20b%23c/x%25y.png"]


def test_memory_filesystem(folder):
    fs = fsspec.filesystem("memory")
    root = f"/images-{uuid.uuid4().hex}"
    # memory:// lives in this process: compute here, not on the session's Dask cluster
    # (a default distributed Client from another test's fixture sends tasks to its workers).
    with dask.config.set(scheduler="threads"), _memory_cleanup(fs, root):
        for path in folder.rglob("*"):
            if path.is_file():
                fs.pipe_file(f"{root}/{path.relative_to(folder).as_posix()}", path.read_bytes())
        rows = read_images(f"memory://{root}", recursive=True).compute()
        check_rows(rows, folder, {**EXPECTED, **NESTED}, lambda name: f"memory://{root}/{name}")
        local = read_images(str(folder), recursive=True).compute()
        assert rows.drop(columns="origin").equals(local.drop(columns="origin"))
        # sampling depends on paths relative to the folder: the same files on any storage
        sample = read_images(f"memory://{root}", recursive=True, sample_ratio=0.5, seed=3)
        local = read_images(str(folder), recursive=True, sample_ratio=0.5, seed=3)
        assert ([o.split(root)[1] for o in sample.compute().origin]
                == [o.split(str(folder))[1] for o in local.compute().origin])


@contextlib.contextmanager
def _memory_cleanup(fs, root):
    try:
        yield
    finally:
        fs.rm(root, recursive=True)


def test_s3_on_a_moto_server(folder, tmp_path):
    with MotoS3(tmp_path) as s3:
        options = {"key": CREDENTIALS["AWS_ACCESS_KEY_ID"],
                   "secret": CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
                   "endpoint_url": s3.endpoint, "client_kwargs": {"region_name": "us-east-1"},
                   "skip_instance_cache": True}
        fs = fsspec.filesystem("s3", **options)
        for path in folder.rglob("*"):
            if path.is_file():
                fs.pipe_file(f"{s3.bucket}/in/{path.relative_to(folder).as_posix()}",
                             path.read_bytes())
        url = f"s3://{s3.bucket}/in"
        rows = read_images(url, storage_options=options).compute()
        check_rows(rows, folder, EXPECTED, lambda name: f"{url}/{name}")
        deep = read_images(url, recursive=True, drop_image_failures=True,
                           storage_options=options).compute()
        assert sorted(o.rsplit("/in/", 1)[1] for o in deep.origin) == sorted(
            k for k, v in {**EXPECTED, **NESTED}.items() if v is not None)
        with pytest.raises(FileNotFoundError, match=f"{url}/missing"):
            read_images(f"{url}/missing", storage_options=options)


def test_sample_ratio_is_deterministic_for_a_seed(tmp_path):
    for i in range(60):
        assert cv2.imwrite(str(tmp_path / f"f{i:02d}.png"), np.full((2, 3), i, np.uint8))

    def names(**kw):
        return [o.rsplit("/", 1)[1] for o in read_images(str(tmp_path), **kw).compute().origin]

    every = names()
    assert len(every) == 60 and names(sample_ratio=1.0, seed=5) == every
    half = names(sample_ratio=0.5, seed=1)
    assert half == names(sample_ratio=0.5, seed=1, npartitions=7)  # same files, any layout
    assert 15 <= len(half) <= 45 and set(half) < set(every) and half == sorted(half)
    assert names(sample_ratio=0.5, seed=2) != half
    # a smaller ratio keeps a subset of what a larger one keeps (same seed)
    assert set(names(sample_ratio=0.2, seed=1)) <= set(half)


def test_bad_arguments_are_named(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="nowhere"):
        read_images(str(missing))
    with pytest.raises(FileNotFoundError, match=r"\*\.png"):
        read_images(str(tmp_path / "*.png"))
    for ratio in (0, -0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="sample_ratio"):
            read_images(str(tmp_path), sample_ratio=ratio)
    with pytest.raises(ValueError, match="npartitions"):
        read_images(str(tmp_path), npartitions=0)
    empty = read_images(str(tmp_path)).compute()  # an empty folder: no rows, the schema
    assert len(empty) == 0 and list(empty.columns)[-1] == "data"


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("channels", [1, 3, 4])
def test_array_round_trip_in_both_channel_orders(dtype, channels):
    rng = np.random.default_rng(channels)
    array = rng.integers(0, np.iinfo(dtype).max, (4, 6, channels), dtype=dtype)
    row = array_to_image(array, origin="mem", order="RGB")
    depth = {np.uint8: 0, np.uint16: 2}[dtype]
    assert (row["origin"], row["height"], row["width"], row["nChannels"], row["mode"]) == (
        "mem", 4, 6, channels, depth + 8 * (channels - 1))
    bgr = array if channels == 1 else array[:, :, [2, 1, 0, 3][:channels]]
    assert row["data"] == np.ascontiguousarray(bgr).astype(array.dtype.newbyteorder("<")
                                                          ).tobytes()
    back = image_to_array(row, "RGB")
    assert back.dtype == dtype and back.flags.writeable and np.array_equal(back, array)
    assert np.array_equal(image_to_array(row, "BGR"), bgr)
    assert array_to_image(bgr, "mem", order="BGR") == row
    if channels == 1:
        assert array_to_image(array[:, :, 0], "mem") == row  # (h, w) is one channel


def test_rows_read_convert_like_opencv_and_back(folder):
    rows = read_images(str(folder)).compute()
    for row in rows.to_dict("records"):
        if row["mode"] < 0:
            with pytest.raises(ValueError, match=re.escape(row["origin"])):
                image_to_array(row)
            continue
        image = opencv(Path(row["origin"][len("file://"):]))
        rgb = image_to_array(row, "RGB")
        if image.ndim == 3:
            code = cv2.COLOR_BGR2RGB if image.shape[2] == 3 else cv2.COLOR_BGRA2RGBA
            assert np.array_equal(rgb, cv2.cvtColor(image, code))
        assert array_to_image(rgb, row["origin"], order="RGB") == row


def test_conversion_errors():
    with pytest.raises(ValueError, match="order"):
        image_to_array(array_to_image(np.zeros((2, 2), np.uint8)), order="RGBA")
    with pytest.raises(ValueError, match=r"\(2, 2, 5\)"):
        array_to_image(np.zeros((2, 2, 5), np.uint8))
    with pytest.raises(ValueError, match="bool"):
        array_to_image(np.zeros((2, 2), bool))
    row = array_to_image(np.zeros((2, 2, 3), np.uint8), origin="x.png")
    with pytest.raises(ValueError, match="x.png: data has 11 bytes"):
        image_to_array({**row, "data": row["data"][:-1]})
    with pytest.raises(ValueError, match="x.png: mode 16 .* 4 channels"):
        image_to_array({**row, "nChannels": 4})


def test_frames_from_images_feed_the_operators(tmp_path):
    rng = np.random.default_rng(1)
    written = {}
    for i in range(5):  # three 8-bit RGB frames of one size, two of another, one 16-bit
        shape = (12, 16, 3) if i < 3 else (8, 8, 3)
        written[f"f{i}.png"] = rng.integers(0, 256, shape, dtype=np.uint8)
    written["g.png"] = rng.integers(0, 65536, (12, 16), dtype=np.uint16)
    for name, bgr in written.items():
        assert cv2.imwrite(str(tmp_path / name), bgr)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnothing")
    df = read_images(str(tmp_path), npartitions=3)
    groups = streamimg.frames_from_images(df)
    u8, u16 = np.dtype(np.uint8), np.dtype(np.uint16)
    assert set(groups) == {(12, 16, 3, u8), (8, 8, 3, u8), (12, 16, 1, u16)}
    big = groups[(12, 16, 3, u8)]
    assert big.shape == (3, 12, 16, 3) and big.dtype == u8 and len(big.chunks[0]) == 2
    rgb = np.stack([cv2.cvtColor(written[f"f{i}.png"], cv2.COLOR_BGR2RGB) for i in range(3)])
    assert np.array_equal(big.compute(), rgb)
    bgr = streamimg.frames_from_images(df, order="BGR")[(8, 8, 3, u8)].compute()
    assert np.array_equal(bgr, np.stack([written["f3.png"], written["f4.png"]]))
    grey = groups[(12, 16, 1, u16)].compute()
    assert grey.dtype == u16 and np.array_equal(grey[0, :, :, 0], written["g.png"])
    # the operators run on a group as they do on frames from Kafka
    blurred = gaussian_blur(big, sigma=1.5).compute()
    one_per_chunk = da.from_array(rgb, chunks=(1, 12, 16, 3))
    assert np.array_equal(blurred, gaussian_blur(one_per_chunk, sigma=1.5).compute())
    assert not np.array_equal(blurred, rgb)
    smoothed = convolve(big, box(3), output_dtype="input").compute()
    assert np.array_equal(smoothed, convolve(rgb, box(3), output_dtype="input").compute())
