"""OnnxClassifier on small onnx.helper models: planted logits and pre-processing probes."""

from __future__ import annotations

import json

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from scipy.special import softmax as scipy_softmax

from streamimg.analytics.classify import Classification, OnnxClassifier, softmax

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406])
IMAGENET_STD = np.array([0.229, 0.224, 0.225])


def save(tmp_path, name, nodes, x, y, inits):
    graph = helper.make_graph(nodes, name, [x], [y], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, tmp_path / f"{name}.onnx")
    return tmp_path / f"{name}.onnx"


def logits_model(tmp_path, name, logits, batch="B", size=224):
    """Input (batch, 3, size, size); output the planted (1, C) logits for every frame."""
    logits = np.asarray(logits, np.float32)[None]
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, size, size])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, logits.shape[1]])
    nodes = [helper.make_node("ReduceMean", ["input"], ["m"], axes=[1, 2, 3], keepdims=0),
             helper.make_node("Unsqueeze", ["m", "ax1"], ["m1"]),   # (B, 1)
             helper.make_node("Mul", ["m1", "zero"], ["z"]),
             helper.make_node("Add", ["z", "planted"], ["logits"])]
    inits = [numpy_helper.from_array(logits, "planted"),
             numpy_helper.from_array(np.array([1], np.int64), "ax1"),
             numpy_helper.from_array(np.zeros(1, np.float32), "zero")]
    return save(tmp_path, name, nodes, x, y, inits)


def channel_mean_model(tmp_path, layout="NCHW", size=32):
    """Output = the 3 per-channel means of the input tensor: a pre-processing probe."""
    shape = ["B", 3, size, size] if layout == "NCHW" else ["B", size, size, 3]
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, shape)
    y = helper.make_tensor_value_info("means", TensorProto.FLOAT, ["B", 3])
    axes = [2, 3] if layout == "NCHW" else [1, 2]
    node = helper.make_node("ReduceMean", ["input"], ["means"], axes=axes, keepdims=0)
    return save(tmp_path, f"means_{layout}", [node], x, y, [])


def scores_by_label(result):
    return {c.label: c.score for c in result}


LOGITS = [1.0, 3.0, 2.0, -1.0, 0.5, 2.5]
LABELS = ["cat", "dog", "fox", "owl", "eel", "yak"]


def test_top_k_order_and_softmax_scores(tmp_path):
    clf = OnnxClassifier(logits_model(tmp_path, "logits", LOGITS), LABELS, top_k=3)
    frames = [np.zeros((100, 150, 3), np.uint8), np.full((300, 200, 3), 255, np.uint8)]
    got = clf.classify_batch(frames)
    ref = scipy_softmax(np.array(LOGITS))
    for result in got:
        assert [c.label for c in result] == ["dog", "yak", "fox"]
        np.testing.assert_allclose([c.score for c in result], ref[[1, 5, 2]], rtol=1e-6)
    assert clf.classify(frames[0]) == got[0]
    assert got[0][0].to_dict() == {"label": "dog", "score": pytest.approx(ref[1])}
    assert isinstance(got[0][0], Classification)
    full = OnnxClassifier(logits_model(tmp_path, "logits", LOGITS), LABELS, top_k=10)
    assert len(full.classify(frames[0])) == 6
    assert sum(c.score for c in full.classify(frames[0])) == pytest.approx(1.0)


def test_softmax_modes(tmp_path):
    probs = [0.1, 0.6, 0.3]
    path = logits_model(tmp_path, "probs", probs)
    frame = np.zeros((10, 10, 3), np.uint8)
    auto = OnnxClassifier(path, ["a", "b", "c"]).classify(frame)
    assert [(c.label, round(c.score, 6)) for c in auto] == [("b", 0.6), ("c", 0.3), ("a", 0.1)]
    forced = OnnxClassifier(path, ["a", "b", "c"], softmax=True).classify(frame)
    np.testing.assert_allclose([c.score for c in forced],
                               scipy_softmax(np.array(probs))[[1, 2, 0]], rtol=1e-6)
    raw = OnnxClassifier(logits_model(tmp_path, "raw", LOGITS), LABELS, softmax=False,
                         top_k=2).classify(frame)
    assert [(c.label, c.score) for c in raw] == [("dog", 3.0), ("yak", 2.5)]
    np.testing.assert_allclose(softmax(np.array([[0.0, 0.0], [1000.0, 0.0]])),
                               [[0.5, 0.5], [1.0, 0.0]])


def test_static_batch_model_runs_frame_by_frame(tmp_path):
    clf = OnnxClassifier(logits_model(tmp_path, "static", LOGITS, batch=1), LABELS, top_k=1)
    got = clf.classify_batch(np.zeros((3, 50, 60, 3), np.uint8))
    assert [[c.label for c in r] for r in got] == [["dog"]] * 3
    assert clf.classify_batch([]) == []


def test_preprocessing_mean_std_rgb(tmp_path):
    clf = OnnxClassifier(channel_mean_model(tmp_path), ["m0", "m1", "m2"], input_size=32,
                         softmax=False)
    red = np.zeros((64, 48, 3), np.uint8)
    red[..., 0] = 255
    got = scores_by_label(clf.classify(red))
    expected = (np.array([1.0, 0.0, 0.0]) - IMAGENET_MEAN) / IMAGENET_STD
    np.testing.assert_allclose([got["m0"], got["m1"], got["m2"]], expected, rtol=1e-5)


def test_preprocessing_bgr_and_resize(tmp_path):
    # the model expects BGR: a red RGB frame must arrive with red in channel 2
    clf = OnnxClassifier(channel_mean_model(tmp_path), ["m0", "m1", "m2"], input_size=32,
                         mean=(0, 0, 0), std=(1, 1, 1), channel_order="BGR", softmax=False)
    frame = np.zeros((90, 300, 3), np.uint8)
    frame[:, :150, 0] = 255            # left half red, right half black
    got = scores_by_label(clf.classify(frame))
    assert got["m2"] == pytest.approx(0.5, abs=1e-6) and got["m0"] == 0.0


def test_keras_caffe_recipe_and_nhwc(tmp_path):
    # Keras resnet50.preprocess_input ("caffe"): BGR, x - mean on 0..255 pixels
    mean = np.array([103.939, 116.779, 123.68])
    clf = OnnxClassifier(channel_mean_model(tmp_path, "NHWC"), ["b", "g", "r"], input_size=32,
                         mean=mean / 255, std=(1 / 255,) * 3, channel_order="BGR",
                         layout="NHWC", softmax=False)
    frame = np.empty((32, 32, 3), np.uint8)
    frame[:] = (10, 20, 30)            # RGB
    got = scores_by_label(clf.classify(frame))
    np.testing.assert_allclose([got["b"], got["g"], got["r"]],
                               np.array([30, 20, 10]) - mean, atol=1e-3)


def test_errors(tmp_path):
    path = logits_model(tmp_path, "err", LOGITS)
    with pytest.raises(ValueError, match="6 classes but 2 labels"):
        OnnxClassifier(path, ["a", "b"]).classify(np.zeros((8, 8, 3), np.uint8))
    for kwargs, match in [({"channel_order": "RGBA"}, "RGBA"), ({"layout": "CHW"}, "CHW"),
                          ({"softmax": "yes"}, "yes"), ({"top_k": 0}, "top_k"),
                          ({"mean": (0.5,)}, "mean")]:
        with pytest.raises(ValueError, match=match):
            OnnxClassifier(path, LABELS, **kwargs)
    with pytest.raises(FileNotFoundError):
        OnnxClassifier(tmp_path / "nope.onnx", LABELS)
    with pytest.raises(ValueError, match="input_size"):
        OnnxClassifier(path, LABELS, input_size=100).classify(np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="shape"):
        OnnxClassifier(path, LABELS).classify(np.zeros((8, 8), np.uint8))


def test_classify_regions_chains_a_detector_and_a_classifier_in_one_call(tmp_path):
    """analyze (boxes) -> classify_regions(OnnxClassifier) in a topology: each region gets
    the classes of its own pixels (a model whose outputs are the crop's channel means, so
    the right answer is known); grey crops have equal channels; a missing detections value
    fails when the topology compiles."""
    import streamimg
    from streamimg.batching import FrameInfo
    from streamimg.codecs.frame import FrameHeader
    from streamimg.topology import TopologyError
    from streamimg.worker import array_block, run_program

    frame = np.zeros((40, 60, 3), np.uint8)
    frame[5:15, 5:15] = (255, 0, 0)
    frame[20:35, 30:45] = (0, 0, 255)
    boxes = [{"label": "face", "score": 0.9, "box": [5, 5, 15, 15]},
             {"label": "face", "score": 0.8, "box": [30, 20, 45, 35]}]
    model = channel_mean_model(tmp_path)
    labels = ["r", "g", "b"]
    plain = OnnxClassifier(model, labels, input_size=32, mean=(0, 0, 0), std=(1, 1, 1),
                           top_k=3, softmax=False)
    t = streamimg.Topology("chain", inputs="in", frame_shape=(40, 60, 3))
    (t.source.analyze("faces", lambda f: boxes)
     .classify_regions(plain, detections="faces", margin=0.0)
     .classify_regions(plain, detections="faces", name="grey", margin=0.0, gray=True)
     .to_kafka_analytics())
    program = t.check()
    info = FrameInfo("in", 0, 0, b"s", FrameHeader("s", 0, 0, 40, 60, 3, "uint8", "raw", "RGB"))
    result = run_program(program, [info, info], [frame, frame], array_block, "r")
    assert result.failures == []
    for recs in result.records[0]:
        (_, value, _), = recs
        record = json.loads(value)
        red, blue = record["faces_classes"]
        assert red["box"] == [5.0, 5.0, 15.0, 15.0] and red["label"] == "face"
        assert scores_by_label_dicts(red["classes"]) == pytest.approx({"r": 1, "g": 0, "b": 0})
        assert scores_by_label_dicts(blue["classes"]) == pytest.approx({"r": 0, "g": 0, "b": 1})
        luma_red, luma_blue = 0.299 * 255 / 255, 0.114 * 255 / 255  # BT.601 weights
        for region, luma in zip(record["grey"], (luma_red, luma_blue), strict=True):
            got = scores_by_label_dicts(region["classes"])
            assert got == pytest.approx({"r": luma, "g": luma, "b": luma}, abs=1 / 255)
    with pytest.raises(TopologyError, match="'faces' it needs is not computed upstream"):
        t2 = streamimg.Topology("chain2", inputs="in")
        t2.source.classify_regions(plain).to_kafka_analytics()
        t2.check()


def scores_by_label_dicts(classes):
    return {c["label"]: c["score"] for c in classes}


def test_classify_regions_on_real_face_crops_from_centerface(tmp_path):
    """The ancestor's chain on a real clip: CenterFace finds the face in frames of
    carphone_pristine.mp4, classify_regions classifies its crop (with a 10 % margin) in
    one call per chunk; a model whose outputs are the crop's channel means makes the
    right answer computable by hand (crop, cv2 bilinear resize to 32x32, mean / 255)."""
    import streamimg
    from streamimg.batching import FrameInfo
    from streamimg.codecs.frame import FrameHeader
    from streamimg.worker import array_block, run_program
    from tests.test_detect import clip_frames

    frames = clip_frames("carphone_pristine.mp4", [0, 40, 80])
    means = OnnxClassifier(channel_mean_model(tmp_path), ["r", "g", "b"], input_size=32,
                           mean=(0, 0, 0), std=(1, 1, 1), top_k=3, softmax=False)
    t = streamimg.Topology("faces", inputs="in", frame_shape=frames[0].shape)
    (t.source.detect_faces(name="faces")
     .classify_regions(means, detections="faces", margin=0.1, name="tones")
     .to_kafka_analytics())
    program = t.check()
    h, w, c = frames[0].shape
    infos = [FrameInfo("in", 0, i, b"car", FrameHeader("car", i, 0, h, w, c, "uint8", "raw",
                                                         "RGB")) for i in range(3)]
    result = run_program(program, infos, frames, array_block, "r")
    assert result.failures == []
    for frame, recs in zip(frames, result.records[0], strict=True):
        (_, value, _), = recs
        (face,) = json.loads(value)["tones"]  # one face in every frame
        x0, y0, x1, y1 = face["box"]
        assert face["label"] == "face" and face["score"] > 0.5 and x1 - x0 > 20
        mx, my = 0.1 * (x1 - x0), 0.1 * (y1 - y0)
        crop = frame[max(0, int(np.floor(y0 - my))):min(h, int(np.ceil(y1 + my))),
                     max(0, int(np.floor(x0 - mx))):min(w, int(np.ceil(x1 + mx)))]
        small = cv2.resize(crop, (32, 32), interpolation=cv2.INTER_LINEAR)
        want = small.reshape(-1, 3).astype(np.float64).mean(0) / 255
        got = scores_by_label_dicts(face["classes"])
        assert [got["r"], got["g"], got["b"]] == pytest.approx(want, abs=1e-4)
