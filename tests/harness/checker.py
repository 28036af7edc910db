"""Exactly-once checker that reads every output record's transaction outcome from the log.

Why: the embedded broker (Tansu 0.6.0) hands the records of aborted transactions to
``read_committed`` readers, so a reader cannot tell a committed output from an aborted one,
and a "lineage" rule that guesses from source offsets and run ids hides duplicates and counts
aborted outputs. Tansu does write real COMMIT/ABORT control batches (producer id, epoch) into
the log; librdkafka hides them, but a raw Fetch request at ``read_uncommitted``
(``isolation_level=0``) returns them. This module sends that Fetch request and decides each
record's outcome from the markers, so the check is sound on Tansu and on Apache Kafka alike.

Outcome rule, per partition: a transactional record belongs to the transaction that the
first later control marker of the same producer id ends; its outcome is that marker's type
(``"committed"`` or ``"aborted"``), ``"open"`` if there is none yet, and ``"plain"`` for a
non-transactional record. The marker's epoch must be at least the record's: Apache Kafka
writes the ABORT of a fenced transaction (and, with KIP-890, every marker) with a bumped
epoch, while Tansu keeps the old one; a marker from an older epoch than the record's ends
nothing. A producer has at most one open transaction, so the first such marker is the right
one.

Protocol: kafka-python (>= 3.0) builds and parses every request and response
(``ApiVersions``, ``Metadata``, ``Fetch``) and the record batches (``MemoryRecords``,
``DefaultRecordBatch``, ``ControlRecord``). Our own code is the blocking socket loop in
:class:`_Connection` only: kafka-python 3's network layer is an event loop built for its
clients, and a checker needs one request at a time.

Tansu's Fetch quirks, measured against 0.6.0 (all handled here):

- ``ApiVersions`` advertises Fetch v0-v17, but from v13 a Fetch names topics by id and
  Tansu answers ``UNKNOWN_TOPIC_OR_PARTITION`` to the ids Metadata gave: use v12 at most
  (the last version with topic names; it also works on Apache Kafka 3.x and 4.x).
- ``partition_max_bytes`` is ignored and ``max_bytes`` is only roughly honoured; one
  partition can fill the whole response and starve the others, so fetch one partition per
  request.
- A fetch from inside a batch returns the whole batch: records below the fetch offset are
  dropped here.
- ``max_wait_ms=0`` gets a response with no partitions at all, even when records wait
  (1 ms and more return them); an empty response is retried with a longer wait.
- On the S3 storage engine, a fetch whose ``max_wait_ms`` runs out before the broker has
  read the records from the object store returns the partition with no records, below the
  high watermark (measured with moto on loopback: at 20 ms, 292 of 364 fetches of one
  partition came back empty and the read never finished; 100 ms read them). Such an answer
  is retried with a longer wait, as an empty response is.
- A fetch at the high watermark waits ``max_wait_ms`` even with ``min_bytes=0``; past it,
  Tansu answers with no error (Kafka: ``OFFSET_OUT_OF_RANGE``). Reads stop at the high
  watermark seen by the first fetch of each partition.
- The high watermark and last stable offset in Fetch responses are right (ListOffsets
  "latest" is not).
"""

from __future__ import annotations

import socket
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, ClassVar

import kafka.errors as kafka_errors
from kafka.protocol.consumer import FetchRequest
from kafka.protocol.metadata import ApiVersionsRequest, MetadataRequest
from kafka.protocol.parser import KafkaProtocol
from kafka.record import MemoryRecords

from streamimg.admin import committed_offsets
from streamimg.config import KafkaConfig
from streamimg.sinks.records import read_lineage

COMMITTED, ABORTED, OPEN, PLAIN = "committed", "aborted", "open", "plain"
OUTCOMES = (COMMITTED, ABORTED, OPEN, PLAIN)
#: Outcomes a ``read_committed`` consumer on Apache Kafka delivers.
VISIBLE = frozenset({COMMITTED, PLAIN})

FETCH_MIN_VERSION = 4  # the first with isolation_level
FETCH_MAX_VERSION = 12  # the last that names topics; v13+ uses topic ids (Tansu: unknown topic)
METADATA_MIN_VERSION = 4  # the first with allow_auto_topic_creation
METADATA_MAX_VERSION = 12
# Tansu answers max_wait_ms=0 with an empty response (no partitions) even when data waits;
# a fetch at the high watermark waits this long, so keep it short (doubled on empty answers).
FETCH_WAIT_MS = 20
FETCH_MAX_BYTES = 64 * 1024 * 1024  # per response; a larger single batch still comes whole
RECEIVE_MAX_BYTES = 2**31 - 1  # a response frame may exceed FETCH_MAX_BYTES (one big batch)
LISTING_CAP = 20  # violations listed per kind in Report.summary()

Source = tuple[str, int, int]
"""``(topic, partition, offset)`` of an input record."""


@dataclass(frozen=True, slots=True)
class ControlMarker:
    """A COMMIT or ABORT control record, as the broker wrote it into a partition.

    ``kind`` is ``"commit"`` or ``"abort"`` (control record key type 1 or 0).
    """

    topic: str
    partition: int
    offset: int
    producer_id: int
    producer_epoch: int
    kind: str


@dataclass(frozen=True, slots=True)
class LogRecord:
    """One data record with the outcome of its transaction.

    ``outcome`` is one of ``"committed"``, ``"aborted"``, ``"open"`` (no marker yet) or
    ``"plain"`` (not transactional). ``marker_offset`` is the offset of the control marker
    that decided it (None for open and plain records). ``value`` is None when the log was
    read with ``keep_values=False``. ``timestamp_ms`` is the record's timestamp in ms since
    the Unix epoch.
    """

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes | None], ...]
    producer_id: int
    producer_epoch: int
    transactional: bool
    outcome: str
    marker_offset: int | None
    timestamp_ms: int

    @property
    def source(self) -> Source | None:
        """The input this record was made from, from its lineage headers; None without them."""
        try:
            lin = read_lineage(list(self.headers))
        except (KeyError, ValueError, AttributeError):  # missing, non-integer or null header
            return None
        return lin["topic"], lin["partition"], lin["offset"]


@dataclass
class TopicLog:
    """Everything in a topic from offset 0 to the high watermark seen when reading began.

    ``records`` are data records in (partition, offset) order; ``markers`` the control
    records in the same order; ``high_watermarks`` and ``last_stable_offsets`` map each
    partition to the values of its first Fetch response.
    """

    topic: str
    records: list[LogRecord] = field(default_factory=list)
    markers: list[ControlMarker] = field(default_factory=list)
    high_watermarks: dict[int, int] = field(default_factory=dict)
    last_stable_offsets: dict[int, int] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        """Records per outcome and markers per kind.

        ``{"committed": n, "aborted": n, "open": n, "plain": n, "commit_markers": n,
        "abort_markers": n}``.
        """
        c = Counter(r.outcome for r in self.records)
        m = Counter(k.kind for k in self.markers)
        return {**{o: c[o] for o in OUTCOMES},
                "commit_markers": m["commit"], "abort_markers": m["abort"]}


# --------------------------------------------------------------------------- transport


class _Connection:
    """A blocking connection to one broker; kafka-python's KafkaProtocol does the protocol.

    Our code here is the socket loop only (connect, send, receive until a whole response).
    Framing, request headers, correlation ids, encoding and decoding are kafka-python's.
    """

    def __init__(self, host: str, port: int, deadline: float):
        self.address = f"{host}:{port}"
        self.sock = socket.create_connection((host, port), timeout=_remaining(deadline, host))
        self.proto = KafkaProtocol(client_id="streamimg-checker",
                                   receive_message_max_bytes=RECEIVE_MAX_BYTES)
        try:
            versions = self.call(ApiVersionsRequest[0](), deadline)  # v0: every broker has it
        except BaseException:
            self.sock.close()
            raise
        if versions.error_code:
            self.sock.close()
            raise kafka_errors.for_code(versions.error_code)(f"ApiVersions from {self.address}")
        self.versions = {a.api_key: (a.min_version, a.max_version) for a in versions.api_keys}

    def version(self, request_cls: Any, lo: int, hi: int) -> int:
        """The highest version of ``request_cls`` in ``[lo, hi]`` that the broker supports."""
        b_lo, b_hi = self.versions.get(request_cls.API_KEY, (0, -1))
        v = min(hi, b_hi, request_cls.max_version)
        if v < max(lo, b_lo):
            raise kafka_errors.UnsupportedVersionError(
                f"{self.address} supports {request_cls.__name__} v{b_lo}-v{b_hi}; "
                f"the checker needs a version in v{lo}-v{hi}")
        return v

    def call(self, request: Any, deadline: float) -> Any:
        self.proto.send_request(request)
        self.sock.settimeout(_remaining(deadline, self.address))
        self.sock.sendall(self.proto.send_bytes())
        while True:
            self.sock.settimeout(_remaining(deadline, self.address))
            try:
                data = self.sock.recv(1 << 20)
            except TimeoutError:
                raise TimeoutError(f"no answer from {self.address} before the deadline") from None
            if not data:
                raise ConnectionError(f"{self.address} closed the connection")
            for _correlation_id, response in self.proto.receive_bytes(data):
                return response

    def close(self) -> None:
        self.sock.close()


def _remaining(deadline: float, what: str) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError(f"deadline passed while talking to {what}")
    return left


class _Cluster:
    """Connections by node id, and partition leaders from Metadata (no topic auto-creation)."""

    def __init__(self, bootstrap: str, deadline: float):
        self.deadline = deadline
        self.conns: dict[Any, _Connection] = {}
        self.brokers: dict[int, tuple[str, int]] = {}
        errors = []
        for hostport in bootstrap.split(","):
            host, _, port = hostport.strip().rpartition(":")
            try:
                self.conns["bootstrap"] = _Connection(host, int(port), deadline)
                break
            except TimeoutError:
                raise
            except OSError as exc:  # refused or unreachable: try the next server
                errors.append(f"{hostport}: {exc}")
        else:
            raise ConnectionError(f"no bootstrap server answered: {errors}")

    def leaders(self, topic: str) -> dict[int, int]:
        """``{partition: leader node id}`` of ``topic``; empty if it does not exist.

        Raises
        ------
        TimeoutError
            If the partitions have no leader before the deadline.
        """
        conn = self.conns["bootstrap"]
        v = conn.version(MetadataRequest, METADATA_MIN_VERSION, METADATA_MAX_VERSION)
        while True:
            resp = conn.call(MetadataRequest[v](
                topics=[MetadataRequest.MetadataRequestTopic(name=topic)],
                allow_auto_topic_creation=False), self.deadline)
            self.brokers.update({b.node_id: (b.host, b.port) for b in resp.brokers})
            found = [t for t in resp.topics if t.name == topic]
            error = found[0].error_code if found else None
            if error == kafka_errors.UnknownTopicOrPartitionError.errno:
                return {}
            if error == 0 and all(p.error_code == 0 and p.leader_id >= 0
                                  for p in found[0].partitions):
                return {p.partition_index: p.leader_id for p in found[0].partitions}
            _remaining(self.deadline, f"metadata of {topic} (error {error})")
            time.sleep(0.05)

    def node(self, node_id: int) -> _Connection:
        if node_id not in self.conns:
            host, port = self.brokers[node_id]
            self.conns[node_id] = _Connection(host, port, self.deadline)
        return self.conns[node_id]

    def close(self) -> None:
        for c in self.conns.values():
            c.close()


# --------------------------------------------------------------------------- reading


def read_topic_log(bootstrap: str, topic: str, timeout_s: float = 60,
                   keep_values: bool = True) -> TopicLog:
    """Read every record and control marker of ``topic`` and decide each record's outcome.

    Reads each partition from offset 0 to the high watermark of its first Fetch response,
    at ``read_uncommitted``, without a consumer group. A topic that does not exist reads as
    empty (it is not created). The log must start at offset 0 (no retention, no deleted
    records: true of the embedded broker). Batch CRCs are not verified (pure-Python
    CRC-32C is slow on frames); compressed batches need the codec's Python package (gzip
    is built in).

    Parameters
    ----------
    bootstrap : str
        ``host:port[,host:port...]``.
    topic : str
        The topic to read.
    timeout_s : float
        Deadline for the whole read (s).
    keep_values : bool
        Keep record values; False saves memory when only headers and outcomes matter.

    Raises
    ------
    TimeoutError
        If the read does not finish within ``timeout_s``.
    kafka.errors.KafkaError
        On a non-retriable Fetch error, or if the broker supports no Fetch in v4-v12.
    ConnectionError
        If no bootstrap server answers or a broker closes the connection.
    """
    deadline = time.monotonic() + timeout_s
    log = TopicLog(topic)
    cluster = _Cluster(bootstrap, deadline)
    try:
        for partition, leader in sorted(cluster.leaders(topic).items()):
            _read_partition(cluster.node(leader), log, partition, deadline, keep_values)
    finally:
        cluster.close()
    return log


def read_log(bootstrap: str, topic: str, timeout_s: float = 60) -> list[LogRecord]:
    """Every data record of ``topic``, offset 0 to the end, with its transaction outcome.

    Records come in (partition, offset) order. The control markers themselves are in
    ``read_topic_log(...).markers``; see :func:`read_topic_log` for the errors raised.
    """
    return read_topic_log(bootstrap, topic, timeout_s).records


def _fetch_request(conn: _Connection, topic: str, partition: int, offset: int,
                   max_wait_ms: int) -> Any:
    v = conn.version(FetchRequest, FETCH_MIN_VERSION, FETCH_MAX_VERSION)
    part = FetchRequest.FetchTopic.FetchPartition(
        partition=partition, fetch_offset=offset, partition_max_bytes=FETCH_MAX_BYTES,
        current_leader_epoch=-1, log_start_offset=-1)
    return FetchRequest[v](replica_id=-1, max_wait_ms=max_wait_ms, min_bytes=0,
                           max_bytes=FETCH_MAX_BYTES,
                           isolation_level=0,  # read_uncommitted: control batches come too
                           topics=[FetchRequest.FetchTopic(topic=topic, partitions=[part])])


def _read_partition(conn: _Connection, log: TopicLog, partition: int, deadline: float,
                    keep_values: bool) -> None:
    topic = log.topic
    offset, end = 0, None
    rows: list[dict[str, Any]] = []
    markers: list[ControlMarker] = []
    wait_ms = FETCH_WAIT_MS
    while end is None or offset < end:
        resp = conn.call(_fetch_request(conn, topic, partition, offset, wait_ms), deadline)
        parts = [p for t in resp.responses for p in t.partitions
                 if p.partition_index == partition]
        if not parts:  # Tansu: the wait ran out before it read the log; wait longer
            _remaining(deadline, f"{topic}[{partition}] (empty Fetch responses)")
            wait_ms = min(2 * wait_ms, 1000)
            continue
        (part,) = parts
        if part.error_code:
            err = kafka_errors.for_code(part.error_code)
            if not err.retriable:
                raise err(f"fetching {topic}[{partition}]@{offset}")
            _remaining(deadline, f"{topic}[{partition}] ({err.__name__})")
            time.sleep(0.05)
            continue
        if end is None:
            end = part.high_watermark
            log.high_watermarks[partition] = part.high_watermark
            log.last_stable_offsets[partition] = part.last_stable_offset
        start = offset
        for batch in MemoryRecords(part.records or b""):
            offset = max(offset, _take_batch(batch, topic, partition, start, rows, markers,
                                             keep_values))
        if offset == start and offset < end:  # nothing new: the wait ran out first (S3)
            _remaining(deadline, f"{topic}[{partition}], stuck at offset {offset} of {end}")
            wait_ms = min(2 * wait_ms, 1000)
            time.sleep(0.05)
    log.records.extend(_resolve(rows, markers))
    log.markers.extend(markers)


def _take_batch(batch: Any, topic: str, partition: int, start: int, rows: list,
                markers: list, keep_values: bool) -> int:
    """Append the batch's records at or after ``start``; return the offset after the batch."""
    if batch.magic < 2:  # v0/v1 message sets: no producer ids, never transactional
        pid, epoch, txn, control, last = -1, -1, False, False, start - 1
    else:
        pid, epoch = batch.producer_id, batch.producer_epoch
        txn, control = batch.is_transactional, batch.is_control_batch
        last = batch.next_offset - 1
    for r in batch:
        last = max(last, r.offset)
        if r.offset < start:  # Tansu and Kafka return the whole batch holding the fetch offset
            continue
        if control:
            kind = {0: "abort", 1: "commit"}.get(r.type, f"type{r.type}")
            markers.append(ControlMarker(topic, partition, r.offset, pid, epoch, kind))
        else:
            rows.append({"topic": topic, "partition": partition, "offset": r.offset,
                         "key": r.key, "value": r.value if keep_values else None,
                         "headers": tuple(r.headers), "producer_id": pid,
                         "producer_epoch": epoch, "transactional": txn,
                         "timestamp_ms": r.timestamp})
    return last + 1


def _resolve(rows: list[dict[str, Any]], markers: list[ControlMarker]) -> list[LogRecord]:
    """Give each row of one partition its outcome from the markers (see the module doc)."""
    events = sorted([(r["offset"], 0, i) for i, r in enumerate(rows)]
                    + [(m.offset, 1, i) for i, m in enumerate(markers)])
    pending: dict[int, list[int]] = defaultdict(list)  # producer id -> undecided rows
    decided: dict[int, tuple[str, int | None]] = {}
    for _offset, is_marker, i in events:
        if not is_marker:
            r = rows[i]
            if r["transactional"]:
                pending[r["producer_id"]].append(i)
            else:
                decided[i] = (PLAIN, None)
            continue
        m = markers[i]
        outcome = COMMITTED if m.kind == "commit" else ABORTED
        still = []
        for j in pending.pop(m.producer_id, []):
            if rows[j]["producer_epoch"] <= m.producer_epoch:
                decided[j] = (outcome, m.offset)
            else:  # a marker of an older epoch cannot end a newer epoch's transaction
                still.append(j)
        if still:
            pending[m.producer_id] = still
    return [LogRecord(**r, outcome=decided.get(i, (OPEN, None))[0],
                      marker_offset=decided.get(i, (OPEN, None))[1])
            for i, r in enumerate(rows)]


# --------------------------------------------------------------------------- checking


@dataclass(frozen=True, slots=True)
class CountMismatch:
    """An input offset with the wrong number of visible records in one topic.

    ``records`` are the ``(partition, offset)`` of the committed (or plain) records found;
    ``others`` the ``(partition, offset, outcome)`` of its aborted and open ones.
    """

    topic: str
    source: Source
    found: int
    expected: int
    records: tuple[tuple[int, int], ...] = ()
    others: tuple[tuple[int, int, str], ...] = ()

    def __str__(self) -> str:
        s = (f"{_src(self.source)} -> {self.topic}: {self.found} committed, "
             f"expected {self.expected}")
        if self.records:
            s += f" at {_at(self.records)}"
        if self.others:
            s += " (also " + ", ".join(f"{o} at [{p}]@{n}" for p, n, o in self.others) + ")"
        return s


@dataclass(frozen=True, slots=True)
class Torn:
    """An input whose outputs are committed in some output topics and not in others.

    ``missing_in`` maps each topic without a committed output to the outcomes of the
    records found there for this input (empty: nothing was written there at all).

    Also an input one of whose transactions committed its output in some topics and not
    in others, although the input has committed outputs everywhere: a producer (id and
    epoch) committed a different number of its outputs per topic (see
    :func:`check_exactly_once`). That happens when the input was processed again after the
    torn transaction: ``committed_in`` then names the topics where that transaction's
    output is committed and ``missing_in`` the others, with the outcomes of that
    producer's records of the input there.
    """

    source: Source
    committed_in: tuple[str, ...]
    missing_in: tuple[tuple[str, tuple[str, ...]], ...]

    def __str__(self) -> str:
        miss = ", ".join(f"{t} ({'/'.join(o) or 'no record'})" for t, o in self.missing_in)
        return f"{_src(self.source)}: committed in {', '.join(self.committed_in)}; not in {miss}"


@dataclass(frozen=True, slots=True)
class OffsetMismatch:
    """A group's committed offset (-1: none) that is not the input's end offset."""

    topic: str
    partition: int
    committed: int
    expected: int

    def __str__(self) -> str:
        return f"{self.topic}[{self.partition}]: committed {self.committed}, end {self.expected}"


@dataclass(frozen=True, slots=True)
class Stray:
    """A committed output that no expected input accounts for; ``reason`` says why."""

    topic: str
    partition: int
    offset: int
    source: Source | None
    reason: str

    def __str__(self) -> str:
        src = _src(self.source) if self.source else "no lineage"
        return f"{self.topic}[{self.partition}]@{self.offset} ({src}): {self.reason}"


TORN_NOTE = ("a transaction committed in some partitions and not in others, so its atomicity "
             "broke in the broker: Tansu's S3 engine does this after a broker SIGKILL (a broker "
             "defect, measured in 3 of 3 runs, see shared/README.md; it writes the COMMIT "
             "markers one partition after the other: 4 of 4 kills between them tore, "
             "tests/test_broker_restart.py). Elsewhere suspect the broker first, then a client "
             "writing one input's outputs in separate transactions")


@dataclass
class Report:
    """What :func:`check_exactly_once` found.

    Every list holds violations; ``ok`` is True when all are empty. ``counts`` maps each
    output and dead-letter topic to its records per outcome and markers per kind (see
    :meth:`TopicLog.counts`). ``logs`` keeps the logs read (values dropped).
    """

    missing: list[CountMismatch] = field(default_factory=list)
    duplicated: list[CountMismatch] = field(default_factory=list)
    unexpected_dead_letters: list[CountMismatch] = field(default_factory=list)
    missing_dead_letters: list[CountMismatch] = field(default_factory=list)
    torn: list[Torn] = field(default_factory=list)
    open_records: list[LogRecord] = field(default_factory=list)
    offsets_mismatch: list[OffsetMismatch] = field(default_factory=list)
    stray: list[Stray] = field(default_factory=list)
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    good_inputs: int = 0
    bad_inputs: int = 0
    logs: dict[str, TopicLog] = field(default_factory=dict, repr=False)

    VIOLATIONS: ClassVar[tuple[str, ...]] = (
        "missing", "duplicated", "unexpected_dead_letters", "missing_dead_letters", "torn",
        "open_records", "offsets_mismatch", "stray")

    @property
    def ok(self) -> bool:
        """True when no violation of any kind was found."""
        return not any(getattr(self, k) for k in self.VIOLATIONS)

    def summary(self) -> str:
        """A multi-line report naming every violation with its coordinates.

        Lists at most ``LISTING_CAP`` (20) violations per kind and says how many more.
        """
        n = sum(len(getattr(self, k)) for k in self.VIOLATIONS)
        lines = [f"exactly-once: {'OK' if self.ok else f'FAILED, {n} violations'} "
                 f"({self.good_inputs} good inputs, {self.bad_inputs} bad)"]
        for topic, c in self.counts.items():
            lines.append(f"  {topic}: " + ", ".join(f"{v} {k}" for k, v in c.items()))
        for kind in self.VIOLATIONS:
            items = getattr(self, kind)
            if not items:
                continue
            lines.append(f"{kind} ({len(items)}):")
            if kind == "torn":
                lines.append(f"  note: {TORN_NOTE}")
            for item in items[:LISTING_CAP]:
                lines.append(f"  {_record_str(item) if kind == 'open_records' else item}")
            if len(items) > LISTING_CAP:
                lines.append(f"  ... and {len(items) - LISTING_CAP} more")
        return "\n".join(lines)


def _src(s: Source) -> str:
    return f"{s[0]}[{s[1]}]@{s[2]}"


def _at(coords: Iterable[tuple[int, int]]) -> str:
    return ", ".join(f"[{p}]@{o}" for p, o in coords)


def _record_str(r: LogRecord) -> str:
    src = _src(r.source) if r.source else "no lineage"
    return (f"{r.topic}[{r.partition}]@{r.offset} ({src}): {r.outcome}, "
            f"producer {r.producer_id} epoch {r.producer_epoch}")


def check_exactly_once(bootstrap: str, *, inputs: Mapping[tuple[str, int], int],
                       outputs: list[str], dlq: str, group: str | None,
                       bad: Iterable[Source] = frozenset(),
                       per_input: int | Mapping[str, int] = 1,
                       timeout_s: float = 120) -> Report:
    """Check exactly-once delivery of a frame topology from the transaction markers in the log.

    Only visible output records count: committed ones, and plain (non-transactional) ones,
    which every reader sees. Each is tied to its input by its lineage headers
    (``streamimg.source.topic/partition/offset``). The input topics are read too: the
    expected inputs are their committed or plain records below the end offset (offsets
    held by control markers are not records; aborted or open input records are neither
    required nor forbidden an output).

    Per expected input record: a good one has exactly ``per_input`` visible outputs in
    every output topic and no dead letter; a bad one has exactly one visible dead letter
    and no output. Outputs committed in some output topics and missing from others are
    reported as ``torn`` (not as ``missing``), with a note that this is a broker defect.

    Torn transactions are also found when the input was processed again afterwards (the
    broker lost the offsets too, so the daemon redid the batch): a transaction writes each
    input's outputs to every output topic, so on an atomic broker every producer (id and
    epoch) has as many committed outputs of an input in each output topic (in proportion
    to ``per_input``). A producer whose counts differ tore a transaction: the input is
    reported as ``torn``, and that producer's committed outputs of the input are left out
    of its ``missing``/``duplicated`` counts (without this, the redo shows up as a
    duplicate in the topics where the torn transaction committed). Plain records have no
    transaction and are always counted.
    When ``group`` is given, its committed offsets must equal the end offsets.

    Parameters
    ----------
    bootstrap : str
        ``host:port[,host:port...]``.
    inputs : mapping
        ``{(topic, partition): end offset}``: the offsets the group must have consumed.
    outputs : list of str
        The output topics (frame topologies: one record per input in each).
    dlq : str
        The dead-letter topic.
    group : str or None
        The consumer group whose committed offsets to check; None skips the check.
    bad : iterable of (topic, partition, offset)
        Inputs that must be dead-lettered.
    per_input : int or mapping
        Visible outputs expected per good input, for all output topics or per topic.
    timeout_s : float
        Deadline for reading all the topics (s).

    Raises
    ------
    ValueError
        If a ``bad`` input is not an expected input record, or ``per_input`` is below 1.
    TimeoutError, ConnectionError, kafka.errors.KafkaError
        From reading the logs (see :func:`read_topic_log`).
    """
    deadline = time.monotonic() + timeout_s
    want = {t: per_input for t in outputs} if isinstance(per_input, int) else dict(per_input)
    if set(want) != set(outputs) or min(want.values(), default=1) < 1:
        raise ValueError(f"per_input={per_input!r} must be >= 1 for each of {outputs}")
    report = Report()

    def read(topic: str) -> TopicLog:
        return read_topic_log(bootstrap, topic, _remaining(deadline, topic), keep_values=False)

    # Expected inputs: visible records below the end; ignored: aborted/open ones below it.
    expected: set[Source] = set()
    ignored: set[Source] = set()
    for topic in sorted({t for t, _ in inputs}):
        for r in read(topic).records:
            end = inputs.get((topic, r.partition))
            if end is not None and r.offset < end:
                (expected if r.outcome in VISIBLE else ignored).add((topic, r.partition, r.offset))
    bad = set(bad)
    if bad - expected:
        raise ValueError(f"bad inputs that are not input records: {sorted(bad - expected)}")
    good = expected - bad
    report.good_inputs, report.bad_inputs = len(good), len(bad)

    # Outputs and dead letters: visible records per source, and the others for diagnosis.
    visible: dict[str, dict[Source, list[tuple[int, int]]]] = {}
    hidden: dict[str, dict[Source, list[tuple[int, int, str]]]] = {}
    # Committed outputs per input and producer (id, epoch); other outcomes of each producer.
    by_producer: dict[str, dict[Source, Counter]] = {}
    others: dict[str, dict[tuple[Source, tuple[int, int]], list[str]]] = {}
    for topic in [*outputs, dlq]:
        log = report.logs[topic] = read(topic)
        report.counts[topic] = log.counts()
        vis, hid = visible[topic], hidden[topic] = defaultdict(list), defaultdict(list)
        prod, oth = by_producer[topic], others[topic] = defaultdict(Counter), defaultdict(list)
        for r in log.records:
            src = r.source
            if r.outcome == OPEN:
                report.open_records.append(r)
            if r.outcome not in VISIBLE:
                if src is not None:
                    hid[src].append((r.partition, r.offset, r.outcome))
                    oth[(src, (r.producer_id, r.producer_epoch))].append(r.outcome)
                continue
            if src is None:
                reason = "no lineage headers"
            elif src in ignored:
                continue
            elif src not in expected:
                reason = "its input is not an input record below the end offset"
            elif topic != dlq and src in bad:
                reason = "output for an input that must be dead-lettered"
            else:
                vis[src].append((r.partition, r.offset))
                if r.outcome == COMMITTED:
                    prod[src][(r.producer_id, r.producer_epoch)] += 1
                continue
            report.stray.append(Stray(topic, r.partition, r.offset, src, reason))

    def mismatch(topic: str, src: Source, expected_n: int) -> CountMismatch:
        found = visible[topic].get(src, [])
        return CountMismatch(topic, src, len(found), expected_n, tuple(found),
                             tuple(hidden[topic].get(src, [])))

    for src in sorted(good):
        present = [t for t in outputs if visible[t].get(src)]
        torn = 0 < len(present) < len(outputs)
        if torn:
            report.torn.append(Torn(src, tuple(present), tuple(
                (t, tuple(o for _, _, o in hidden[t].get(src, [])))
                for t in outputs if t not in present)))
        counts = {t: by_producer[t].get(src, Counter()) for t in outputs}
        torn_by = sorted(g for g in set().union(*counts.values())
                         if len({Fraction(counts[t][g], want[t]) for t in outputs}) > 1)
        if torn_by and not torn:
            torn = True
            top = {t: max(Fraction(counts[t][g], want[t]) for g in torn_by) for t in outputs}
            full = [t for t in outputs if top[t] == max(top.values())]
            report.torn.append(Torn(src, tuple(full), tuple(
                (t, tuple(o for g in torn_by for o in others[t].get((src, g), [])))
                for t in outputs if t not in full)))
        for t in outputs:
            n = len(visible[t].get(src, [])) - sum(counts[t][g] for g in torn_by)
            if n > want[t]:
                report.duplicated.append(mismatch(t, src, want[t]))
            elif n < want[t] and not (torn and n == 0):
                report.missing.append(mismatch(t, src, want[t]))
        if visible[dlq].get(src):
            report.unexpected_dead_letters.append(mismatch(dlq, src, 0))
    for src in sorted(bad):
        n = len(visible[dlq].get(src, []))
        if n == 0:
            report.missing_dead_letters.append(mismatch(dlq, src, 1))
        elif n > 1:
            report.duplicated.append(mismatch(dlq, src, 1))

    if group is not None:
        got = committed_offsets(KafkaConfig(bootstrap=bootstrap), group,
                                sorted({t for t, _ in inputs}),
                                timeout_s=_remaining(deadline, f"group {group}"))
        for (t, p), end in sorted(inputs.items()):
            if got.get((t, p), -1) != end:
                report.offsets_mismatch.append(OffsetMismatch(t, p, got.get((t, p), -1), end))
    return report
