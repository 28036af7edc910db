"""Reading where a consumer resumes while the broker does not answer (frozen with SIGSTOP)."""

from __future__ import annotations

import signal
import threading
import time

import pytest
from confluent_kafka import Consumer, TopicPartition

from streamimg.admin import BrokerUnreachable, committed_positions, ensure_topics
from streamimg.broker import EmbeddedBroker
from streamimg.config import KafkaConfig


@pytest.mark.timeout(120)
def test_committed_positions_wait_for_a_frozen_broker_within_their_bound(tmp_path, uid):
    with EmbeddedBroker(log_path=tmp_path / "tansu.log") as broker:
        kafka = KafkaConfig(bootstrap=broker.bootstrap)
        topic = f"in-{uid}"
        ensure_topics(kafka, [topic], partitions=2)
        consumer = Consumer(kafka.consumer(f"g-{uid}", "c"))
        wanted = [TopicPartition(topic, p) for p in (0, 1)]
        try:
            before = committed_positions(consumer, wanted)
            assert [tp.offset for tp in before] == [-1001, -1001]  # nothing committed yet
            broker.process.send_signal(signal.SIGSTOP)
            try:
                start = time.monotonic()
                with pytest.raises(BrokerUnreachable, match="in 3 s"):
                    committed_positions(consumer, wanted, bound_s=3.0, timeout_s=1.0)
                assert 2.5 < time.monotonic() - start < 15
                start = time.monotonic()  # a stop request ends the waiting after one try
                with pytest.raises(BrokerUnreachable, match="before the stop request"):
                    committed_positions(consumer, wanted, stopping=lambda: True,
                                        timeout_s=1.0)
                assert time.monotonic() - start < 5
            finally:
                broker.process.send_signal(signal.SIGCONT)
            # The broker answers again within the bound: the read succeeds.
            broker.process.send_signal(signal.SIGSTOP)
            thaw = threading.Timer(2.0, broker.process.send_signal, (signal.SIGCONT,))
            thaw.start()
            try:
                after = committed_positions(consumer, wanted, bound_s=60.0, timeout_s=1.0)
            finally:
                thaw.join()
                broker.process.send_signal(signal.SIGCONT)
            assert [(tp.partition, tp.offset) for tp in after] == [(0, -1001), (1, -1001)]
        finally:
            consumer.close()
