"""The head of every topology: a streamz node fed with batches read from Kafka.

The daemon owns the consumer (see ``streamimg.daemon``): it polls, closes a
batch at ``max_frames`` frames or ``max_wait_ms`` after its first frame, turns
it into a :class:`~streamimg.batching.Batch` and calls :meth:`FrameSource.emit`.
Emitting only builds Dask graphs (microseconds per frame); the work runs on
the Dask workers, never on the poll loop.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from streamz import Stream

if TYPE_CHECKING:
    from streamimg.topology import Topology


class FrameSource(Stream):
    """Source node of a topology; emits :class:`~streamimg.batching.Batch` objects.

    Chain operators from it like any streamz stream::

        topology.source.gaussian_blur(2.0).palette().to_kafka_frames()
    """

    def __init__(self, topology: Topology, **kwargs):
        self.topology = topology
        super().__init__(stream_name=f"{topology.name}.source", **kwargs)


def topology_of(stream: Stream) -> Topology:
    """The :class:`~streamimg.topology.Topology` whose source ``stream`` descends from.

    Raises
    ------
    ValueError
        If ``stream`` is not downstream of a :class:`FrameSource`.
    """
    seen, todo = set(), [stream]
    while todo:
        node = todo.pop()
        if isinstance(node, FrameSource):
            return node.topology
        if id(node) not in seen:
            seen.add(id(node))
            todo.extend(u for u in node.upstreams if u is not None)
    raise ValueError("this stream does not start at a Topology's source; build it from "
                     "topology.source")
