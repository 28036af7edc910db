"""streamimg: real-time image and video processing on Dask, fed by Kafka, exactly-once.

Data flow, one module per step: ``sources`` (video files, Kafka batches) ->
``codecs`` (frame and pixel messages) -> ``batching`` (Dask arrays, one chunk
per frame) -> ``operators`` / ``analytics`` -> ``sinks`` (records, and the
transaction in ``sinks.checkpoint``). ``daemon`` drives it; ``stream``
registers the chainable methods on ``streamz.Stream``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# The names below are imported on first use (PEP 562), so `import streamimg.cli` (the
# `streamimg` command) stays light: `streamimg --help` starts in well under a second.
# Creating a Topology registers the Stream methods (``streamimg.stream``).
_LAZY = {"PixelFrames": "streamimg.assembly", "Batch": "streamimg.batching",
         "FrameInfo": "streamimg.batching", "BatchConfig": "streamimg.config",
         "ConfigError": "streamimg.config", "KafkaConfig": "streamimg.config",
         "Topology": "streamimg.topology", "TopologyError": "streamimg.topology",
         "load_topology": "streamimg.topology", "read_images": "streamimg.sources.images",
         "frames_from_images": "streamimg.sources.images",
         "image_to_array": "streamimg.sources.images",
         "array_to_image": "streamimg.sources.images"}

if TYPE_CHECKING:
    from streamimg.assembly import PixelFrames
    from streamimg.batching import Batch, FrameInfo
    from streamimg.config import BatchConfig, ConfigError, KafkaConfig
    from streamimg.sources.images import (
        array_to_image,
        frames_from_images,
        image_to_array,
        read_images,
    )
    from streamimg.topology import Topology, TopologyError, load_topology

__all__ = ["Batch", "BatchConfig", "ConfigError", "FrameInfo", "KafkaConfig", "PixelFrames",
           "Topology", "TopologyError", "array_to_image", "frames_from_images", "image_to_array",
           "load_topology", "read_images"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    """Import a public name on first use (``streamimg.Topology`` and the like)."""
    if name not in _LAZY:
        raise AttributeError(f"module 'streamimg' has no attribute {name!r}")
    importlib.import_module("streamimg.stream")  # registers the Stream methods
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
