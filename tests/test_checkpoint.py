"""The Committer on a real broker: batches merged into one transaction, epochs dropped,
fencing found by an idle committer's probe."""

from __future__ import annotations

import threading
import time

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from streamimg.admin import committed_offsets, ensure_topics, read_topic
from streamimg.sinks.checkpoint import Checkpoint, FatalKafkaError, FinishedBatch, fencing_probe
from streamimg.sinks.committer import Committer
from tests.harness.checker import read_topic_log
from tests.helpers import wait_until


def batch(seq, epoch, topic, offset, metadata):
    return FinishedBatch(seq, epoch, "run", 1, [(f"{topic}.out", b"k", str(seq).encode(), [])],
                         [], f"{topic}.dlq", {(topic, 0): offset}, metadata)


def test_frame_buffers_are_produced_byte_for_byte(kafka, uid):
    """A record value may be encode_frame's buffer (an ndarray): the broker gets its bytes."""
    import numpy as np

    from streamimg.codecs.frame import encode_frame

    topic = f"buf-{uid}"
    ensure_topics(kafka, [topic])
    frames = [np.random.default_rng(i).integers(0, 256, (72, 128, 3), dtype=np.uint8)
              for i in range(3)]
    values = [encode_frame(f, stream="s", index=i, buffer=True)[0] for i, f in enumerate(frames)]
    checkpoint = Checkpoint(kafka.producer(f"t-{uid}"))
    checkpoint.start()
    try:
        consumer = Consumer(kafka.consumer(f"g-{uid}", "c"))
        checkpoint.commit([(topic, b"s", v, []) for v in values], [],
                          consumer.consumer_group_metadata())
        consumer.close()
    finally:
        checkpoint.close()
    assert [m.value() for m in read_topic(kafka, topic)] == [f.tobytes() for f in frames]


def test_waiting_batches_share_a_transaction_and_discarded_epochs_never_commit(kafka, uid):
    topic, group = f"in-{uid}", f"g-{uid}"
    ensure_topics(kafka, [topic, f"{topic}.out", f"{topic}.dlq"])
    consumer = Consumer(kafka.consumer(group, "c"))
    consumer.assign([TopicPartition(topic, 0, 0)])
    meta = consumer.consumer_group_metadata()
    checkpoint = Checkpoint(kafka.producer(f"t-{uid}"))
    checkpoint.start()
    committer = Committer(checkpoint, start=False, max_merge=3)
    try:
        committer.put(batch(6, 0, topic, 6, meta))  # epoch 0, discarded before it commits
        committer.discard_before(1)
        for seq in range(1, 6):  # epoch 1: five batches waiting, merged 3 + 2
            committer.put(batch(seq, 1, topic, seq, meta))
        committer.put(batch(7, 2, topic, 7, meta))  # epoch 2: never merged with epoch 1
        committer.start()
        assert committer.wait_idle(60)
        outcomes = {o.batch.seq: o.status for o in committer.outcomes()}
    finally:
        committer.stop(30)
        checkpoint.close()
        consumer.close()
    assert outcomes == {1: "committed", 2: "committed", 3: "committed", 4: "committed",
                        5: "committed", 6: "dropped", 7: "committed"}
    values = [m.value() for m in read_topic(kafka, f"{topic}.out")]
    assert values == [b"1", b"2", b"3", b"4", b"5", b"7"]
    log = read_topic_log(kafka.bootstrap, f"{topic}.out")
    assert [m.kind for m in log.markers] == ["commit"] * 3  # (1, 2, 3), (4, 5), (7)
    assert committed_offsets(kafka, group, [topic]) == {(topic, 0): 7}


def test_an_idle_committer_probes_and_learns_it_was_fenced(kafka, uid):
    topic, group = f"in-{uid}", f"g-{uid}"
    ensure_topics(kafka, [topic, f"{topic}.out", f"{topic}.dlq"])
    consumer = Consumer(kafka.consumer(group, "c"))
    consumer.assign([TopicPartition(topic, 0, 0)])
    checkpoint = Checkpoint(kafka.producer(f"t-{uid}"))
    checkpoint.start()
    probe = fencing_probe(kafka.consumer(f"t-{uid}.fencing-probe", "p"), topic)
    # No probe may be between its offsets and its commit while the newer producer starts:
    # there Tansu drops the connection instead of answering PRODUCER_FENCED, and the commit
    # times out (see the next test). The gate holds probes back for the newer's start.
    gate, probe_once = threading.Lock(), checkpoint.probe

    def gated_probe(*args):
        with gate:
            return probe_once(*args)

    checkpoint.probe = gated_probe
    committer = Committer(checkpoint, probe=probe, probe_idle_s=0.2)
    newer = None
    try:
        wait_until(lambda: committer.probes >= 2, 60, "two probes while alone")
        assert committer.fatal_error is None
        newer = Producer(kafka.producer(f"t-{uid}"))
        with gate:
            newer.init_transactions(30)  # what a second instance with the same id does first
        wait_until(lambda: committer.fatal_error, 60, "the probe to find the newer producer")
        assert "took over" in committer.fatal_error
        committer.put(batch(1, 0, topic, 1, consumer.consumer_group_metadata()))
        assert committer.wait_idle(60)
        assert [o.status for o in committer.outcomes()] == ["dropped"]
    finally:
        committer.stop(30)
        checkpoint.close(abandon=True)
        consumer.close()
    # The probes commit offset 0 for their own group; the real group is never touched.
    assert committed_offsets(kafka, f"t-{uid}.fencing-probe", [topic]) == {(topic, 0): 0}
    assert all(o < 0 for o in committed_offsets(kafka, group, [topic]).values())
    assert read_topic(kafka, f"{topic}.out") == []


@pytest.mark.timeout(180)
def test_a_probe_whose_commit_times_out_resumes_it_and_the_producer_goes_on(tmp_path, uid):
    """The broker freezes (SIGSTOP) between the probe's offsets and its commit, longer than
    the call's timeout: the commit is resumed (librdkafka refuses to abort a commit in
    progress, so an abort left the producer refusing every later transaction)."""
    import signal as sig
    import threading

    from streamimg.broker import EmbeddedBroker
    from streamimg.config import KafkaConfig

    with EmbeddedBroker(log_path=tmp_path / "tansu.log") as broker:
        kafka = KafkaConfig(bootstrap=broker.bootstrap)
        topic = f"in-{uid}"
        ensure_topics(kafka, [topic, f"{topic}.out"])
        checkpoint = Checkpoint(kafka.producer(f"t-{uid}"), timeout_s=2.0, retries=5)
        checkpoint.start()
        offsets, metadata = fencing_probe(kafka.consumer(f"t-{uid}.fencing-probe", "p"), topic)
        producer = checkpoint._producer
        send = producer.send_offsets_to_transaction

        def send_then_freeze(*args):  # the broker stops right after the offsets are sent
            send(*args)
            broker.process.send_signal(sig.SIGSTOP)
            threading.Timer(5.0, broker.process.send_signal, (sig.SIGCONT,)).start()

        checkpoint._producer = type("Freezing", (), {
            "__getattr__": lambda self, name: getattr(producer, name),
            "send_offsets_to_transaction": staticmethod(send_then_freeze)})()
        try:
            checkpoint.probe(offsets, metadata)  # times out at least twice, then commits
        finally:
            broker.process.send_signal(sig.SIGCONT)
            checkpoint._producer = producer
        checkpoint.commit([(f"{topic}.out", b"k", b"after the freeze", [])], offsets, metadata)
        assert [m.value() for m in read_topic(kafka, f"{topic}.out")] == [b"after the freeze"]
        checkpoint.close()


@pytest.mark.timeout(120)
def test_a_commit_in_flight_when_a_newer_producer_starts_stops_within_its_bound(kafka, uid):
    """A newer instance starts between a transaction's offsets and its commit. Kafka answers
    the commit with PRODUCER_FENCED; Tansu 0.6 drops the connection on every EndTxn of the
    fenced producer instead, so librdkafka retries until the call times out. Either way the
    checkpoint stops within ``(retries + 1) * timeout_s`` and nothing of it is committed."""
    topic, group = f"in-{uid}", f"g-{uid}"
    ensure_topics(kafka, [topic, f"{topic}.out"])
    consumer = Consumer(kafka.consumer(group, "c"))
    checkpoint = Checkpoint(kafka.producer(f"t-{uid}"), timeout_s=2.0, retries=1)
    checkpoint.start()
    producer, newer = checkpoint._producer, Producer(kafka.producer(f"t-{uid}"))
    send = producer.send_offsets_to_transaction

    def send_then_newer_starts(*args):
        send(*args)
        newer.init_transactions(30)

    checkpoint._producer = type("Fenced", (), {
        "__getattr__": lambda self, name: getattr(producer, name),
        "send_offsets_to_transaction": staticmethod(send_then_newer_starts)})()
    start = time.monotonic()
    try:
        with pytest.raises(FatalKafkaError) as stopped:
            checkpoint.commit([(f"{topic}.out", b"k", b"fenced", [])],
                              [TopicPartition(topic, 0, 1)], consumer.consumer_group_metadata())
    finally:
        checkpoint._producer = producer
        checkpoint.close(abandon=True)
        consumer.close()
    assert time.monotonic() - start < 30
    assert "took over" in str(stopped.value) or "outcome is unknown" in str(stopped.value)
    log = read_topic_log(kafka.bootstrap, f"{topic}.out")
    assert "commit" not in [m.kind for m in log.markers]
    assert all(o < 0 for o in committed_offsets(kafka, group, [topic]).values())
