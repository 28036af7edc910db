"""Classify every frame with a user-supplied ONNX model (the ResNet50 step of Spark's pipeline).

Configuration (checked at start-up, before any offset moves):
``CLASSIFIER_MODEL`` path of an ONNX image classifier (NCHW float input, logits or
probabilities out); ``CLASSIFIER_LABELS`` a text file, one label per line, in output
order; optional ``CLASSIFIER_INPUT_SIZE`` (default 224). Frames are resized to the
input size and normalised with the ImageNet mean/std inside the classifier.
Outputs: ``classify.analytics`` (top-5 labels and scores per frame).
"""

import os
from pathlib import Path

from streamimg import Topology, TopologyError
from streamimg.analytics.classify import OnnxClassifier

model = os.environ.get("CLASSIFIER_MODEL")
labels = os.environ.get("CLASSIFIER_LABELS")
if not model or not labels:
    raise TopologyError("set CLASSIFIER_MODEL (an .onnx file) and CLASSIFIER_LABELS (a text "
                        "file, one label per line)")
classifier = OnnxClassifier(model, Path(labels).read_text().split("\n")[:-1] or [],
                            input_size=int(os.environ.get("CLASSIFIER_INPUT_SIZE", "224")),
                            top_k=5)

topology = Topology("classify", inputs=os.environ.get("CLASSIFIER_INPUT", "frames"),
                    max_frames=16, max_wait_ms=100)
topology.source.classify(classifier, name="classes").to_kafka_analytics()
