"""The demo topology: blur every frame, extract its K-means palette, write both out.

Run it with ``streamimg run topologies/video_analysis.py --bootstrap HOST:PORT``.
Outputs: ``video_analysis.frames`` (blurred frames, JPEG), ``video_analysis.analytics``
(one JSON record per frame), dead letters in ``video_analysis.dlq``.
"""

from streamimg import Topology

topology = Topology("video_analysis", inputs="frames", max_frames=8, max_wait_ms=100,
                    max_in_flight=4)

(topology.source
    .gaussian_blur(sigma=2.0)
    .palette(k=5, sample=10_000, seed=0)
    .to_kafka_frames(encoding="jpeg")
    .to_kafka_analytics())
