"""read_images checked against Spark itself (issue 11).

The same folder is read by pyspark's ``spark.read.format("image")`` on a local JVM and by
:func:`streamimg.read_images`, and every row is compared field by field, keyed by ``origin``
(which must be the same string). Where the two decoders differ by design (module notes of
``streamimg.sources.images``: OpenCV keeps 16 bits and grey+alpha, decodes WebP, converts
CMYK JPEGs otherwise) the test checks the exact relation between the two rows rather than
skipping the file. ``ImageSchema.toNDArray``/``toImage`` are run on our rows/arrays.

Needs pyspark (the ``test`` extra) and a Java runtime (Debian's openjdk-17-jre-headless);
the module is skipped, with the reason, without either.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

import streamimg
from streamimg.sources.images import COLUMNS, array_to_image, image_to_array

pytest.importorskip("pyspark", reason="pyspark is not installed (the test extra)")
if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
    pytest.skip("no Java runtime (apt-get install openjdk-17-jre-headless)",
                allow_module_level=True)

from pyspark import SparkContext  # noqa: E402
from pyspark.ml.image import ImageSchema  # noqa: E402
from pyspark.sql import Row, SparkSession  # noqa: E402

pytestmark = pytest.mark.timeout(120)

FAILED = (-1, -1, -1, -1, b"")
# no-break space, NEL (a C1 control), em space, an emoji (two UTF-16 chars in Java)
SPACES = "u\u00a0v\u0085w\u2003x\U0001f600.png"
# Files every listing leaves out (Spark: HadoopFSUtils.shouldFilterOutPathName on each listed
# name, PartitioningAwareFileIndex.isDataPath and `getLen > 0` on the files).
SKIPPED = ["_SUCCESS", "_c.png", ".hidden.png", "x.png._COPYING_", "empty.png",
           ".cache/c.png", "sub/_tmp/t.png", "sub/d._COPYING_/t.png"]


@pytest.fixture(scope="module")
def spark(tmp_path_factory):
    """A local one-core Spark on loopback: no UI, no progress bar, quiet log."""
    scratch = tmp_path_factory.mktemp("spark")
    # For the JVM pyspark starts: loopback only, and UTF-8 file names (without a UTF-8
    # locale Java 17 reads non-ASCII names as "?").
    launch = {"SPARK_LOCAL_IP": "127.0.0.1", "LC_ALL": "C.UTF-8"}
    saved = {k: os.environ.get(k) for k in launch}
    os.environ.update(launch)
    try:
        session = _session(scratch)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    session.sparkContext.setLogLevel("ERROR")
    try:
        yield session
    finally:
        _stop(session)


def _stop(session) -> None:
    """Stop Spark and end the JVM (stop() alone leaves it running, ~200 MB, until exit)."""
    gateway = SparkContext._gateway
    session.stop()
    if gateway is None:
        return
    gateway.shutdown()
    SparkContext._gateway = SparkContext._jvm = None
    proc = getattr(gateway, "proc", None)  # the JVM pyspark started; it exits on stdin EOF
    if proc is not None:
        proc.stdin.close()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _session(scratch: Path):
    return (SparkSession.builder.master("local[1]").appName("streamimg-test-images")
            .config("spark.driver.memory", "512m")
            .config("spark.driver.host", "127.0.0.1")
            .config("spark.driver.bindAddress", "127.0.0.1")
            .config("spark.ui.enabled", "false")
            .config("spark.ui.showConsoleProgress", "false")
            .config("spark.local.dir", str(scratch))
            .config("spark.sql.warehouse.dir", str(scratch / "warehouse"))
            # a few small reads: the JVM's quick compiler and no code generation make the
            # first query seconds faster (same results)
            .config("spark.driver.extraJavaOptions", "-XX:TieredStopAtLevel=1")
            .config("spark.sql.codegen.wholeStage", "false")
            .config("spark.sql.codegen.factoryMode", "NO_CODEGEN")
            .getOrCreate())


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """Every kind of file Spark's reader meets, at the top and in sub-folders."""
    rng = np.random.default_rng(11)
    root = tmp_path_factory.mktemp("spark-images") / "images"
    for d in ("sub/deeper", "sub/_metadata", "sub/_tmp", "sub/d._COPYING_", ".cache"):
        (root / d).mkdir(parents=True)
    u8 = lambda *shape: rng.integers(0, 256, shape, dtype=np.uint8)  # noqa: E731
    u16 = lambda *shape: rng.integers(0, 65536, shape, dtype=np.uint16)  # noqa: E731
    for name, image in [("rgb8.png", u8(5, 7, 3)), ("grey8.png", u8(5, 7)),
                        ("rgba8.png", u8(5, 7, 4)), ("grey16.png", u16(6, 3)),
                        ("rgb16.png", u16(6, 3, 3)), ("rgba16.png", u16(4, 5, 4)),
                        ("rgb.bmp", u8(4, 6, 3)), ("rgb.tif", u8(4, 6, 3)),
                        ("sub/n.png", u8(3, 4, 3)), ("sub/deeper/m.png", u8(2, 5)),
                        ("sub/_metadata/k.png", u8(3, 3)), ("_a=b.png", u8(2, 2, 3)),
                        ("a b#c%d [1] é€+~.png", u8(3, 2)), (SPACES, u8(2, 3))]:
        assert cv2.imwrite(str(root / name), image)
    smooth = np.linspace(0, 255, 16 * 24 * 3).reshape(16, 24, 3).astype(np.uint8)
    assert cv2.imwrite(str(root / "photo.jpg"), smooth, [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert cv2.imwrite(str(root / "grey.jpg"), smooth[:, :, 1])
    Image.fromarray(u8(5, 6, 3)).convert("P").save(root / "palette.png")
    Image.fromarray(u8(5, 6, 2), "LA").save(root / "grey_alpha.png")
    Image.fromarray(u8(5, 6, 3)).save(root / "anim.gif")
    Image.fromarray(u8(5, 6, 3)).convert("CMYK").save(root / "cmyk.jpg")
    noise = u8(33, 47, 3)  # JPEG: the same pixels from both decoders, whatever the layout
    assert cv2.imwrite(str(root / "noise420.jpg"), noise)
    assert cv2.imwrite(str(root / "noise444.jpg"), noise, [cv2.IMWRITE_JPEG_SAMPLING_FACTOR,
                                                           cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444])
    assert cv2.imwrite(str(root / "progressive.jpg"), noise, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])
    Image.fromarray(u8(5, 6, 3)).save(root / "lossless.webp", lossless=True)
    good = (root / "rgb8.png").read_bytes()
    (root / "corrupt.png").write_bytes(good[:40] + bytes(len(good) - 40))  # header, no data
    (root / "notes.txt").write_text("not an image\n")
    for name in SKIPPED:  # each a readable image, except the empty ones
        (root / name).write_bytes(b"" if name in ("empty.png", "_SUCCESS") else good)
    return root


def spark_rows(spark, path, **options) -> dict:
    """origin -> (height, width, nChannels, mode, data) of Spark's image data source."""
    df = spark.read.format("image").options(**options).load(str(path)).select("image.*")
    assert df.columns == list(COLUMNS)
    rows = df.collect()
    out = {r.origin: (r.height, r.width, r.nChannels, r.mode, bytes(r.data)) for r in rows}
    assert len(out) == len(rows)
    return out


def our_rows(path, **kwargs) -> dict:
    rows = streamimg.read_images(str(path), **kwargs).compute()
    out = {r.origin: (r.height, r.width, r.nChannels, r.mode, r.data)
           for r in rows.itertuples(index=False)}
    assert len(out) == len(rows)
    return out


def _pixels(fields: tuple, origin: str = "") -> np.ndarray:
    h, w, c, mode, data = fields
    return image_to_array(dict(zip(COLUMNS, (origin, h, w, c, mode, data), strict=True)), "BGR")


def check_same_as_spark(ours: dict, theirs: dict) -> None:
    """Same origins; every field equal, except the documented decoder differences."""
    # ImageIO has no WebP reader: Spark's failed row (or none with dropInvalid); OpenCV's
    # decodes it.
    webp = {origin for origin in ours if origin.endswith(".webp")}
    assert sorted(set(ours) - webp) == sorted(set(theirs) - webp)
    for origin in webp:
        assert ours[origin][:4] == (5, 6, 3, 16) and theirs.get(origin, FAILED) == FAILED
    for origin, spark_fields in theirs.items():
        name = origin.rsplit("/", 1)[1]
        mine = ours[origin]
        if name.endswith(".webp"):
            continue
        if name in ("grey16.png", "rgb16.png", "rgba16.png"):
            # ImageSchema.decode makes every image CV_8U. Grey: `raster.getSample(...).toByte`,
            # the low byte of each 16-bit sample; colour: `img.getRGB`, Java2D's 16 -> 8-bit
            # scaling (round(v * 255 / 65535)). OpenCV keeps the 16 bits.
            c = mine[2]
            assert spark_fields[:4] == (mine[0], mine[1], c, 8 * (c - 1))
            assert mine[3] == 2 + 8 * (c - 1)
            wide = _pixels(mine)
            narrow = ((wide & 0xFF) if c == 1 else
                      (wide.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
            assert np.array_equal(_pixels(spark_fields), narrow), name
        elif name == "grey_alpha.png":  # Spark keeps the grey sample, drops the alpha
            assert spark_fields[:4] == (5, 6, 1, 0) and mine[:4] == (5, 6, 4, 24)
            bgra = _pixels(mine)
            assert np.array_equal(bgra[:, :, 0], bgra[:, :, 1])
            assert np.array_equal(_pixels(spark_fields), bgra[:, :, :1])
        elif name == "cmyk.jpg":  # converted to BGR apart (ImageIO's and OpenCV's CMYK)
            assert mine[:4] == spark_fields[:4] == (5, 6, 3, 16) and mine[4] != spark_fields[4]
        else:
            assert mine == spark_fields, name


def test_folder_against_spark(spark, folder):
    theirs = spark_rows(spark, folder)
    ours = our_rows(folder)
    check_same_as_spark(ours, theirs)
    # the form of Spark's origin: Hadoop's qualified path URI, java.net.URI-quoted
    assert f"file://{folder}/corrupt.png" in ours
    assert f"file://{folder}/a%20b%23c%25d%20%5B1%5D%20é€+~.png" in ours
    assert ours[f"file://{folder}/corrupt.png"] == FAILED
    assert ours[f"file://{folder}/notes.txt"] == FAILED
    assert f"file://{folder}/u%C2%A0v%C2%85w%E2%80%83x\U0001f600.png" in ours
    assert f"file://{folder}/_a=b.png" in ours  # `_` with `=` is a data file for Spark
    assert not any(o.endswith(tuple(SKIPPED)) for o in ours)


def test_drop_invalid_against_spark(spark, folder):
    theirs = spark_rows(spark, folder, dropInvalid=True)
    ours = our_rows(folder, drop_image_failures=True)
    check_same_as_spark(ours, theirs)
    assert not any(fields == FAILED for fields in ours.values())
    assert f"file://{folder}/rgb8.png" in ours and f"file://{folder}/notes.txt" not in ours


def test_recursive_against_spark(spark, folder):
    theirs = spark_rows(spark, folder, recursiveFileLookup=True)
    ours = our_rows(folder, recursive=True, npartitions=3)
    check_same_as_spark(ours, theirs)
    nested = sorted(o.split("/images/", 1)[1] for o in ours if "/sub/" in o)
    assert nested == ["sub/_metadata/k.png", "sub/deeper/m.png", "sub/n.png"]
    kept = our_rows(folder, recursive=True, drop_image_failures=True)
    check_same_as_spark(kept, spark_rows(spark, folder, recursiveFileLookup=True,
                                         dropInvalid=True))


def test_partition_like_folders_when_recursive(spark, tmp_path):
    # A folder named k=v is a partition to Spark unless recursiveFileLookup (then a column
    # would be added, which read_images does not do): only the recursive read compares.
    png = cv2.imencode(".png", np.arange(6, dtype=np.uint8).reshape(2, 3))[1].tobytes()
    for rel in ("k=v/a.png", "_k=v/b.png", "_k/c.png", "ok/d.png"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(png)
    theirs = spark_rows(spark, tmp_path, recursiveFileLookup=True)
    ours = our_rows(tmp_path, recursive=True)
    check_same_as_spark(ours, theirs)
    assert sorted(o.rsplit("/", 1)[1] for o in ours) == ["a.png", "b.png", "d.png"]


def test_one_file_and_a_glob_against_spark(spark, folder):
    odd = "a b#c%d [1] é€+~.png"
    # Both take a path with glob characters as a glob, so the [ of the name is escaped:
    # `\[` for Hadoop's GlobPattern, `[[]` for fsspec's glob.
    for spark_path, path in [(folder / "rgba8.png", folder / "rgba8.png"),
                             (folder / odd.replace("[", r"\["), folder / odd.replace("[", "[[]")),
                             (folder / "*8.png", folder / "*8.png")]:
        theirs = spark_rows(spark, spark_path)
        assert theirs, path
        check_same_as_spark(our_rows(path), theirs)


def test_image_schema_and_types_match_spark(spark, folder):
    assert list(ImageSchema.imageFields) == list(COLUMNS)
    spark_types = [f.dataType.simpleString() for f in ImageSchema.columnSchema.fields]
    assert spark_types == ["string", "int", "int", "int", "int", "binary"]
    frame = streamimg.read_images(str(folder / "*8.png")).compute()  # Spark's int is 32-bit
    assert [str(t) for t in frame.dtypes[1:]] == ["int32"] * 4 + ["large_binary[pyarrow]"]
    # Spark 3.5 names the 8-bit types only; ours are the same numbers (OpenCV's, which also
    # give our 16-bit rows their modes: CV_16UC1 = 2 ...)
    assert ImageSchema.ocvTypes == {"Undefined": -1, "CV_8U": 0, "CV_8UC1": 0, "CV_8UC3": 16,
                                    "CV_8UC4": 24}
    assert ImageSchema.ocvTypes[ImageSchema.undefinedImageType] == FAILED[3]  # failed rows
    for channels in (1, 3, 4):
        row = array_to_image(np.zeros((2, 3, channels), np.uint8))
        assert row["mode"] == ImageSchema.ocvTypes[f"CV_8UC{channels}"]


def test_to_ndarray_on_our_rows_and_to_image_on_our_arrays(spark, folder):
    rows = streamimg.read_images(str(folder), recursive=True).compute()
    checked = 0
    for record in rows.to_dict("records"):
        row = Row(**record)  # a pyspark Row with the fields in schema order
        assert tuple(row.__fields__) == COLUMNS
        if record["mode"] < 0:
            continue
        if record["mode"] & 7:  # toNDArray reads uint8 only: 16-bit rows are ours alone
            assert record["origin"].endswith("16.png")
            continue
        assert np.array_equal(ImageSchema.toNDArray(row), image_to_array(row, order="BGR"))
        checked += 1
    assert checked >= 12
    # Spark's own rows convert the same way through our image_to_array
    for r in spark.read.format("image").load(str(folder)).select("image.*").collect():
        if r.mode >= 0:
            assert np.array_equal(ImageSchema.toNDArray(r), image_to_array(r, order="BGR"))
    rng = np.random.default_rng(3)
    for channels in (1, 3, 4):
        bgr = rng.integers(0, 256, (4, 5, channels), dtype=np.uint8)
        spark_row = ImageSchema.toImage(bgr, origin="mem")
        mine = array_to_image(bgr, origin="mem", order="BGR")
        assert {**spark_row.asDict(), "data": bytes(spark_row.data)} == mine
