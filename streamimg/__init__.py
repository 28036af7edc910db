"""streamimg: real-time image and video processing on Dask, fed by Kafka, exactly-once.

Data flow, one module per step: ``sources`` (video files, Kafka batches) ->
``codecs`` (frame and pixel messages) -> ``batching`` (Dask arrays, one chunk
per frame) -> ``operators`` / ``analytics`` -> ``sinks`` (records, and the
transaction in ``sinks.checkpoint``). ``daemon`` drives it; ``stream``
registers the chainable methods on ``streamz.Stream``.
"""

from streamimg import stream as _stream  # noqa: F401  (registers the Stream methods)
from streamimg.assembly import PixelFrames
from streamimg.batching import Batch, FrameInfo
from streamimg.config import BatchConfig, ConfigError, KafkaConfig
from streamimg.topology import Topology, TopologyError, load_topology

__all__ = ["Batch", "BatchConfig", "ConfigError", "FrameInfo", "KafkaConfig", "PixelFrames",
           "Topology", "TopologyError", "load_topology"]
__version__ = "0.1.0"
