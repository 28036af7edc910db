"""The head of every topology: a streamz node fed with batches read from Kafka.

The daemon owns the consumer (see ``streamimg.daemon``). The source node
stands for the decoded input frames when the topology compiles: it emits the
root :class:`~streamimg.plan.Plan` once and returns what the sinks returned
(see ``streamimg.plan``); batches themselves never pass through streamz.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from streamz import Stream

if TYPE_CHECKING:
    from streamimg.topology import Topology


class FrameSource(Stream):
    """Source node of a topology; chain operators from it like any streamz stream.

    For example ``topology.source.gaussian_blur(2.0).palette().to_kafka_frames()``.
    """

    def __init__(self, topology: Topology, **kwargs):
        self.topology = topology
        super().__init__(stream_name=f"{topology.name}.source", **kwargs)

    def emit(self, x, asynchronous=False, metadata=None) -> list:
        """Push ``x`` downstream and return what the downstream nodes returned."""
        return self._emit(x, metadata=metadata)


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
