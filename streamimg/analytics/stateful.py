"""The contract of a stateful analytics operator: state per stream, carried from frame to frame.

A stateful operator (a tracker, a line or zone counter) turns each frame's
analytics values into a new value while it updates a state of its own, kept
per stream: the frames of one stream reach :meth:`StatefulOp.step` one after
the other in capture order (their Kafka offset order), never in parallel, and
never twice for a committed frame. The state is committed with the batch's
offsets in the same Kafka transaction (see :mod:`streamimg.state`), so counts
and track ids continue exactly through daemon crashes, restarts and
rebalances.

Operators are plain objects pickled with the topology's program; they carry
settings only. The state is whatever :meth:`StatefulOp.initial` returns, and
travels as the bytes of :meth:`StatefulOp.dumps`: it must come back from
:meth:`StatefulOp.loads` such that the next steps give exactly what they would
have given without the round trip.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from streamimg.batching import FrameInfo


@runtime_checkable
class StatefulOp(Protocol):
    """A per-stream stateful operator (see the module docstring).

    Attributes
    ----------
    needs : tuple of str
        Names of the analytics values it reads (computed upstream, stateless or
        stateful); :meth:`step` gets them in ``values``.
    """

    needs: tuple[str, ...]

    def initial(self) -> Any:
        """The state of a stream seen for the first time."""

    def step(self, state: Any, info: FrameInfo, values: dict[str, Any]) -> tuple[Any, Any]:
        """Advance ``state`` by one frame; return ``(new state, the frame's value)``.

        ``info`` gives the frame's stream (``info.header.stream``), index and capture time
        (``info.header.timestamp_ms``, ms since the epoch). ``state`` may be changed in
        place and returned. The value must be JSON-serialisable or have ``to_dict()``.
        An exception fails only this frame (it goes to the dead-letter topic) and leaves
        the stream's state as it was before the frame.
        """

    def dumps(self, state: Any) -> bytes:
        """``state`` as bytes (kept in the committed state record)."""

    def loads(self, data: bytes) -> Any:
        """The state :meth:`dumps` gave ``data`` for."""
