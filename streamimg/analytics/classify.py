"""Image classification with user-supplied ONNX models (e.g. an exported ResNet50).

The ResNet50 step of seed 002 (Spark image source -> resize to 224x224 -> batch
inference), for frames in this project's convention: RGB uint8 ``(H, W, 3)``.
Mind the BGR trap the seed describes: Spark's image source (and
``cv2.imread``) yields BGR; convert with
``streamimg.operators.color.convert_color(frame, "BGR", "RGB")`` before classifying, and set
``channel_order="BGR"`` only when the *model* expects BGR input (e.g. Keras'
``resnet50.preprocess_input``, "caffe" mode).

Sessions come from :func:`streamimg.analytics.sessions.load_session`: one per
model file per process, one intra-op thread by default.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import cv2
import numpy as np

from streamimg.analytics.sessions import DEFAULT_PROVIDERS, dynamic_batch, load_session

__all__ = ["Classification", "OnnxClassifier", "softmax"]


@dataclass(frozen=True)
class Classification:
    """One class prediction: ``label`` (str) and ``score`` (float in [0, 1])."""

    label: str
    score: float

    def to_dict(self) -> dict:
        """JSON-ready form ``{"label": str, "score": float}``."""
        return asdict(self)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Numerically stable softmax over the last axis.

    Parameters
    ----------
    logits : numpy.ndarray
        ``(..., C)`` floats.

    Returns
    -------
    numpy.ndarray
        float64 of the same shape, rows summing to 1.
    """
    z = np.asarray(logits, dtype=np.float64)
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def _is_distribution(scores: np.ndarray) -> bool:
    return bool(np.all(scores >= 0) and np.all(scores <= 1)
                and np.allclose(scores.sum(axis=-1), 1.0, atol=1e-3))


class OnnxClassifier:
    """Top-k classifier over a user-supplied ONNX model.

    Pre-processing per frame (torchvision/Keras ImageNet convention): resize
    the whole frame to ``input_size`` with ``cv2.INTER_LINEAR`` (no crop, as in
    seed 002), ``x = (pixel / 255 - mean) / std`` per channel, reorder to the
    model's ``channel_order``, lay out as ``layout``, float32.

    Parameters
    ----------
    path : str or os.PathLike
        ONNX file with one input ``(B, 3, h, w)`` (NCHW) or ``(B, h, w, 3)``
        (NHWC) float32 and a first output ``(B, num_classes)``.
    labels : sequence of str
        Class names, index = class id; length must equal ``num_classes``.
    input_size : int or (h, w)
        Network input size in pixels (224 for ResNet50).
    mean, std : sequence of 3 floats
        In [0, 1] pixel units and in the model's channel order. Defaults are
        the ImageNet statistics used by torchvision (RGB). Keras "caffe" mode
        (BGR, ``x - mean`` on 0-255) is ``mean=(103.939/255, 116.779/255,
        123.68/255)``, ``std=(1/255,)*3``, ``channel_order="BGR"``.
    channel_order : {"RGB", "BGR"}
        Channel order the model expects (frames are always given as RGB).
    layout : {"NCHW", "NHWC"}
        Input layout (PyTorch exports: NCHW; Keras/TF exports: NHWC).
    top_k : int
        Number of classes returned per frame.
    softmax : {"auto", True, False}
        Apply a softmax to the outputs: always, never, or (``"auto"``) only if a
        row is not already a probability distribution (values in [0, 1] summing
        to 1 within 1e-3).
    providers : sequence of str
        ONNX Runtime providers.
    intra_op_num_threads : int
        Threads per inference (default 1).

    Raises
    ------
    ValueError
        Bad ``channel_order``, ``layout``, ``softmax``, ``top_k``, mean/std
        length; at inference, an output width that differs from ``len(labels)``.
    FileNotFoundError
        If ``path`` does not exist.
    """

    def __init__(self, path: str | os.PathLike, labels: Sequence[str],
                 input_size: int | tuple[int, int] = 224,
                 mean: Sequence[float] = (0.485, 0.456, 0.406),
                 std: Sequence[float] = (0.229, 0.224, 0.225),
                 channel_order: str = "RGB", layout: str = "NCHW", top_k: int = 5,
                 softmax: bool | str = "auto", *,
                 providers: Sequence[str] = DEFAULT_PROVIDERS, intra_op_num_threads: int = 1):
        if channel_order not in ("RGB", "BGR"):
            raise ValueError(f"channel_order must be 'RGB' or 'BGR', got {channel_order!r}")
        if layout not in ("NCHW", "NHWC"):
            raise ValueError(f"layout must be 'NCHW' or 'NHWC', got {layout!r}")
        if softmax not in ("auto", True, False):
            raise ValueError(f"softmax must be 'auto', True or False, got {softmax!r}")
        if int(top_k) != top_k or top_k < 1:
            raise ValueError(f"top_k must be a positive integer, got {top_k!r}")
        self.mean = np.asarray(mean, dtype=np.float32).reshape(-1)
        self.std = np.asarray(std, dtype=np.float32).reshape(-1)
        if self.mean.shape != (3,) or self.std.shape != (3,) or np.any(self.std == 0):
            raise ValueError(f"mean and std need 3 values (std non-zero), got {mean!r}, {std!r}")
        self.path = os.path.abspath(os.fspath(path))
        self.labels = [str(label) for label in labels]
        h, w = (input_size, input_size) if np.isscalar(input_size) else input_size
        self.input_size = (int(h), int(w))
        self.channel_order, self.layout = channel_order, layout
        self.top_k, self.softmax = int(top_k), softmax
        self.providers = tuple(providers)
        self.intra_op_num_threads = int(intra_op_num_threads)
        self._load()  # fail early on a bad path

    def _load(self):
        return load_session(self.path, self.providers, self.intra_op_num_threads)

    def preprocess(self, frames) -> np.ndarray:
        """Turn RGB uint8 frames into the model's input tensor.

        Parameters
        ----------
        frames : numpy.ndarray or sequence of numpy.ndarray
            ``(n, H, W, 3)`` batch or list of ``(H_i, W_i, 3)`` uint8 RGB frames.

        Returns
        -------
        numpy.ndarray
            float32 ``(n, 3, h, w)`` (NCHW) or ``(n, h, w, 3)`` (NHWC).

        Raises
        ------
        ValueError
            If a frame is not ``(H, W, 3)``.
        """
        h, w = self.input_size
        out = []
        for f in frames:
            if f.ndim != 3 or f.shape[2] != 3:
                raise ValueError(f"expected RGB frames (h, w, 3), got shape {f.shape}")
            out.append(f if f.shape[:2] == (h, w) else
                       cv2.resize(f, (w, h), interpolation=cv2.INTER_LINEAR))
        x = np.stack(out).astype(np.float32) / np.float32(255)
        if self.channel_order == "BGR":
            x = x[..., ::-1]
        x = (x - self.mean) / self.std
        if self.layout == "NCHW":
            x = x.transpose(0, 3, 1, 2)
        return np.ascontiguousarray(x, dtype=np.float32)

    def classify(self, frame: np.ndarray) -> list[Classification]:
        """Top-k classes of one RGB uint8 frame ``(H, W, 3)``, best first."""
        if frame.ndim != 3:
            raise ValueError(f"classify takes one frame (h, w, 3), got shape {frame.shape}")
        return self.classify_batch([frame])[0]

    def classify_batch(self, frames) -> list[list[Classification]]:
        """Top-k classes per frame, in one ONNX Runtime call when the batch dim is dynamic.

        Parameters
        ----------
        frames : numpy.ndarray or sequence of numpy.ndarray
            ``(n, H, W, 3)`` uint8 RGB batch, or a list of frames of any sizes.

        Returns
        -------
        list of list of Classification
            Per frame, ``min(top_k, num_classes)`` entries by descending score
            (ties: lower class index first).

        Raises
        ------
        ValueError
            If the model's output width differs from ``len(labels)``, or its
            fixed input size differs from ``input_size``.
        """
        if len(frames) == 0:
            return []
        session = self._load()
        x = self.preprocess(frames)
        name, shape = session.get_inputs()[0].name, session.get_inputs()[0].shape
        spatial = shape[2:4] if self.layout == "NCHW" else shape[1:3]
        if any(isinstance(d, int) and d > 0 and d != s
               for d, s in zip(spatial, self.input_size, strict=False)):
            raise ValueError(f"input_size={self.input_size} with layout {self.layout} does not "
                             f"match the model's input {shape}")
        if dynamic_batch(session):
            scores = session.run(None, {name: x})[0]
        else:
            scores = np.concatenate([session.run(None, {name: x[i:i + 1]})[0]
                                     for i in range(len(x))])
        scores = np.asarray(scores, dtype=np.float64).reshape(len(x), -1)
        if scores.shape[1] != len(self.labels):
            raise ValueError(f"model outputs {scores.shape[1]} classes but "
                             f"{len(self.labels)} labels were given")
        if self.softmax is True or (self.softmax == "auto" and not _is_distribution(scores)):
            scores = softmax(scores)
        k = min(self.top_k, scores.shape[1])
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return [[Classification(self.labels[j], float(row[j])) for j in idx]
                for row, idx in zip(scores, order, strict=True)]
