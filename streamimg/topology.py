"""Topologies: a name, input topics, batching, and a streamz pipeline from ``source``.

A topology is a plain Python file that assigns a module-level ``topology``::

    from streamimg import Topology

    topology = Topology("video_analysis", inputs="frames", max_frames=8)
    (topology.source
        .gaussian_blur(sigma=2.0)
        .palette(k=5)
        .to_kafka_frames(encoding="jpeg")
        .to_kafka_analytics())

``streamimg run FILE`` loads it with :func:`load_topology`, which compiles
the pipeline into a :class:`~streamimg.plan.Program` and runs it once on a
synthetic frame of the declared input (``frame_shape``, ``frame_dtype``), so a
pipeline mistake (annotate before a filter, an unknown analytics name, a
float frame into a PNG sink) fails with a :class:`TopologyError` before any
Kafka client starts.
"""

from __future__ import annotations

import logging
import runpy
from dataclasses import replace
from pathlib import Path

import numpy as np
from streamz import Stream

from streamimg.assembly import PixelAssembler, PixelFrames
from streamimg.batching import FrameInfo, MessageBatcher
from streamimg.codecs.frame import FrameHeader
from streamimg.config import BatchConfig, ConfigError, check_topic
from streamimg.plan import Plan, PlanError, Program
from streamimg.sources.kafka import FrameSource
from streamimg.state import StateError, run_state
from streamimg.worker import array_block, run_program


class TopologyError(ValueError):
    """A topology file or definition is unusable; the message says where and why."""


class Topology:
    """A named streaming job: inputs, batching, and the pipeline hanging off ``source``.

    Parameters
    ----------
    name : str
        Names the consumer group (by default), the ``transactional.id``
        (``<name>-<instance>``) and the default output topics
        ``<name>.frames``, ``<name>.analytics`` and ``<name>.dlq``. Must be a
        legal Kafka topic name.
    inputs : str or list of str
        Topics carrying frame messages (see ``streamimg.codecs.frame``).
    max_frames, max_wait_ms, max_in_flight, max_in_flight_bytes : int
        Batching and backpressure, see :class:`~streamimg.config.BatchConfig`.
    partitions : int
        Partitions for topics the daemon has to create (inputs or outputs).
    pixels : PixelFrames, optional
        The inputs carry pixel messages (``name;frame;x;y;v``) to assemble into
        frames of this size; exactly one input topic. Frame messages when None.
    frame_shape : (height, width, channels), optional
        The input frames' shape in pixels, for the start-up check (a synthetic
        frame runs through the pipeline before anything is consumed); (48, 64, 3)
        when not given, the pixel frame size for pixel topologies.
    frame_dtype : str
        The input frames' dtype for the same check.
    max_state_bytes : int
        Largest committed state of the stateful operators per input partition, bytes
        (default 1,000,000: under Apache Kafka's default ``max.message.bytes``). A
        temporal window holds frames: raise it for windows of large frames (the daemon
        creates ``<name>.state`` with a ``max.message.bytes`` to match; the client's
        ``max_message_bytes`` must be at least as large).

    Raises
    ------
    TopologyError
        On an illegal name, topic or batching value.
    """

    def __init__(self, name: str, inputs: str | list[str], *, max_frames: int = 8,
                 max_wait_ms: int = 30, max_in_flight: int = 4,
                 max_in_flight_bytes: int = 512 * 1024 * 1024, partitions: int = 1,
                 pixels: PixelFrames | None = None,
                 frame_shape: tuple[int, int, int] | None = None, frame_dtype: str = "uint8",
                 max_state_bytes: int = Program.max_state_bytes):
        import streamimg.stream  # noqa: F401  (registers the Stream methods; imports us)

        try:
            self.name = check_topic(name, "topology name")
            self.inputs = [check_topic(t, "input topic") for t in
                           ([inputs] if isinstance(inputs, str) else list(inputs))]
            self.batching = BatchConfig(max_frames, max_wait_ms, max_in_flight,
                                        max_in_flight_bytes)
        except ConfigError as exc:
            raise TopologyError(str(exc)) from None
        if not self.inputs:
            raise TopologyError(f"topology {name!r} has no input topics")
        if not 1 <= partitions <= 10_000:
            raise TopologyError(f"partitions={partitions} must be in [1, 10000]")
        self.partitions = partitions
        if not 1024 <= max_state_bytes <= 1_000_000_000:
            raise TopologyError(f"max_state_bytes={max_state_bytes} outside [1 KiB, 1 GB]")
        self.max_state_bytes = max_state_bytes
        if pixels is not None and not isinstance(pixels, PixelFrames):
            raise TopologyError(f"pixels must be a streamimg.PixelFrames, got {pixels!r}")
        if pixels is not None and len(self.inputs) != 1:
            raise TopologyError(f"a pixel topology reads exactly one topic, got {self.inputs}")
        self.pixels = pixels
        if pixels is not None:
            frame_shape, frame_dtype = (pixels.height, pixels.width, 1), pixels.dtype
        shape = tuple(frame_shape) if frame_shape is not None else (48, 64, 3)
        if len(shape) != 3 or not all(isinstance(n, int) and n >= 1 for n in shape):
            raise TopologyError(f"frame_shape={frame_shape!r} must be (height, width, "
                                "channels) in pixels, each >= 1")
        try:
            self.frame_dtype = np.dtype(frame_dtype)
        except TypeError:
            raise TopologyError(f"frame_dtype={frame_dtype!r} is not a NumPy dtype") from None
        self.frame_shape = shape
        self.output_topics: set[str] = set()
        # streamz links downstream nodes by weak reference: without these strong
        # references a pipeline ending in sinks of ours would be garbage-collected.
        self._sinks: list[Stream] = []
        self._checked: Program | None = None
        self.source = FrameSource(self)

    @property
    def frames_topic(self) -> str:
        """Default topic for processed frames, ``<name>.frames``."""
        return f"{self.name}.frames"

    @property
    def analytics_topic(self) -> str:
        """Default topic for analytics records, ``<name>.analytics``."""
        return f"{self.name}.analytics"

    @property
    def dlq_topic(self) -> str:
        """Dead-letter topic, ``<name>.dlq``."""
        return f"{self.name}.dlq"

    @property
    def state_topic(self) -> str | None:
        """``<name>.assembler`` for pixel topologies (committed assembly state), else None."""
        return f"{self.name}.assembler" if self.pixels is not None else None

    @property
    def operator_state_topic(self) -> str:
        """``<name>.state``: committed state of the stateful operators (tracks, counts)."""
        return f"{self.name}.state"

    def state_topics(self) -> list[str]:
        """Every topic of committed state this topology uses (compiles it if needed).

        ``<name>.assembler`` for pixel topologies, ``<name>.state`` when a stateful
        operator is in the pipeline; each has one partition per input partition.
        """
        return ([self.state_topic] if self.state_topic else []) + (
            [self.operator_state_topic] if self.check().stateful else [])

    def make_batcher(self, max_record_bytes: int = 64 * 1024 * 1024
                     ) -> MessageBatcher | PixelAssembler:
        """A fresh batcher for this topology's input format (the daemon makes one per run).

        ``max_record_bytes``: larger input records are dead-lettered by reference.
        """
        b = self.batching
        if self.pixels is not None:
            return PixelAssembler(self.pixels, b.max_frames, b.max_wait_ms)
        return MessageBatcher(b.max_frames, b.max_wait_ms, max_record_bytes=max_record_bytes)

    def add_sink(self, node: Stream, topic: str | None) -> Stream:
        """Keep sink ``node`` alive and record that it writes ``topic``; return ``node``.

        ``topic`` is None for a sink that writes no topic (files).
        """
        if topic is not None:
            self.add_output(topic)
        self._sinks.append(node)
        return node

    def add_output(self, topic: str) -> str:
        """Record that a sink writes ``topic`` (the daemon creates it if missing).

        Raises
        ------
        TopologyError
            If ``topic`` is illegal or is one of the inputs (a loop).
        """
        try:
            check_topic(topic, "output topic")
        except ConfigError as exc:
            raise TopologyError(str(exc)) from None
        if topic in self.inputs:
            raise TopologyError(f"output topic {topic!r} is also an input of {self.name!r}")
        self.output_topics.add(topic)
        return topic

    def compile(self) -> Program:
        """Run the pipeline once on the root plan; return its :class:`~streamimg.plan.Program`.

        Raises
        ------
        TopologyError
            If the pipeline is put together wrongly (a frame operator after
            annotate, an analytics name used twice or missing) or has no sink.
        """
        streamz_log = logging.getLogger("streamz.core")
        level = streamz_log.level
        streamz_log.setLevel(logging.CRITICAL)  # streamz logs every exception in map nodes
        try:
            sinks = self.source.emit(Plan())
        except (PlanError, TopologyError) as exc:
            raise TopologyError(f"topology {self.name!r}: {exc}") from None
        finally:
            streamz_log.setLevel(level)
        if not sinks:
            raise TopologyError(f"topology {self.name!r} has no Kafka sink (to_kafka_frames, "
                                "to_kafka_analytics, to_kafka_pixels or to_kafka_records)")
        return Program(self.name, tuple(sinks), self.max_state_bytes)

    def check(self) -> Program:
        """Compile, then run the program on one synthetic frame of the declared input.

        The frame is mid-grey noise of ``frame_shape`` and ``frame_dtype``
        (seeded); every operator, value, drawing step and sink runs on it here,
        in this process, so mistakes surface at start-up and not per batch.

        The checked program is kept: a second call returns it without running
        anything (``load_topology`` checks, and so does the daemon).

        Raises
        ------
        TopologyError
            Naming the stage that failed and why.
        """
        if self._checked is not None:
            return self._checked
        checked = self.compile()
        # External sinks (files) encode but write nothing here: a check has no side effects.
        program = Program(checked.name, tuple(
            replace(s, kwargs={**s.kwargs, "dry_run": True}) if s.external else s
            for s in checked.sinks), checked.max_state_bytes)
        rng = np.random.default_rng(0)
        if self.frame_dtype.kind == "f":
            frame = rng.uniform(0, 255, self.frame_shape).astype(self.frame_dtype)
        else:
            frame = rng.integers(0, 256, self.frame_shape).astype(self.frame_dtype)
        h, w, c = self.frame_shape
        order = {1: "GRAY", 3: "RGB", 4: "RGBA"}.get(c, "RGB")
        header = FrameHeader("start-up-check", 0, 0, h, w, c, self.frame_dtype.name, "raw", order)
        info = FrameInfo(self.inputs[0], 0, 0, b"start-up-check", header)
        result = run_program(program, [info], [frame], array_block, "check")
        failures = result.failures
        if program.stateful and not failures:
            try:
                failures = run_state(*program.pickled(), {}, [result.pending], [info],
                                     "check").failures
            except StateError as exc:
                failures = [(0, "state", str(exc))]
        if failures:
            _, stage, reason = failures[0]
            raise TopologyError(
                f"topology {self.name!r} fails on a synthetic {h}x{w}x{c} {self.frame_dtype} "
                f"frame at {stage}: {reason} (declare frame_shape/frame_dtype in Topology(...) "
                "if the input differs)")
        self._checked = checked
        return checked

    def nodes(self) -> list[Stream]:
        """Every streamz node of the pipeline, source first."""
        out, todo, seen = [], [self.source], set()
        while todo:
            node = todo.pop(0)
            if id(node) in seen:
                continue
            seen.add(id(node))
            out.append(node)
            todo.extend(node.downstreams)
        return out

    def destroy(self) -> None:
        """Detach every node (streamz keeps sinks in a global set until then)."""
        for node in reversed(self.nodes()):
            node.destroy()
        self._sinks.clear()


def load_topology(path: str | Path) -> Topology:
    """Run a topology file and return its module-level ``topology``.

    Raises
    ------
    TopologyError
        If the file is missing, raises while loading (the message names the
        exception), defines no ``topology`` of type :class:`Topology`, or its
        pipeline has no Kafka sink.
    """
    path = Path(path)
    if not path.is_file():
        raise TopologyError(f"{path}: no such topology file")
    try:
        namespace = runpy.run_path(str(path), run_name="__streamimg_topology__")
    except TopologyError as exc:
        raise TopologyError(f"{path}: {exc}") from exc
    except Exception as exc:
        raise TopologyError(f"{path}: failed to load: {type(exc).__name__}: {exc}") from exc
    topology = namespace.get("topology")
    if not isinstance(topology, Topology):
        raise TopologyError(f"{path}: must assign a streamimg.Topology to a module-level "
                            f"`topology`, found {type(topology).__name__}")
    try:
        topology.check()
    except TopologyError as exc:
        raise TopologyError(f"{path}: {exc}") from None
    return topology
