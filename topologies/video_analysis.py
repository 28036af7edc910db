"""The demo topology: faces, blur, K-means palette, annotated frames, analytics.

Run it with ``streamimg run topologies/video_analysis.py --bootstrap HOST:PORT``.
Input: frame messages on ``frames``. Outputs, exactly-once:
``video_analysis.frames`` (the blurred frame with face boxes and its palette strip,
JPEG), ``video_analysis.analytics`` (one JSON record per frame), and dead letters
in ``video_analysis.dlq``.
"""

from streamimg import Topology

topology = Topology("video_analysis", inputs="frames", max_frames=8, max_wait_ms=100,
                    max_in_flight=4)

(topology.source
    .detect_faces(max_side=640)          # CenterFace on the sharp frame, <= 640 px side
    .gaussian_blur(sigma=2.0)
    .palette(k=5, sample=10_000, seed=0)
    .to_kafka_analytics()                # palette, faces, timings per frame
    .annotate(detections="faces", palette="palette")
    .to_kafka_frames(encoding="jpeg"))
