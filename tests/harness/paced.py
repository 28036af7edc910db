"""Frames produced at a steady pace from background threads, for tests of a live stream."""

from __future__ import annotations

import threading
import time
import traceback

from streamimg.sources.video import SourceFrame, produce_frames


class PacedStream:
    """Frames into ``partitions`` partitions of ``topic`` (0 and 1 by default), one stream
    and one background thread each, in bursts, until
    :meth:`stop` (or ``cap`` frames per partition); :meth:`stop` returns the end offsets.

    ``restart_on_error``: a producer that fails (a broker restart can desynchronise an
    idempotent producer for good: ``OUT_OF_ORDER_SEQUENCE_NUMBER``, fatal) is replaced by a
    new one that goes on with the next frame, as a camera's would; the failures are kept in
    :attr:`errors` instead of failing :meth:`stop`. The frames of a failed producer may or
    may not be in the log: the checker reads the log."""

    def __init__(self, kafka, topic, images, burst=4, pause_s=0.8, cap=600, wall_clock=False,
                 restart_on_error=False, partitions=2):
        self._wall_clock = wall_clock  # capture times: now (ms since the epoch), else i ms
        self._restart = restart_on_error
        self._stopped = threading.Event()
        self._ends, self.errors = {}, []
        self._threads = [threading.Thread(target=self._run, daemon=True,
                                          args=(kafka, topic, images, p, burst, pause_s, cap))
                         for p in range(partitions)]
        for t in self._threads:
            t.start()

    def _frames(self, images, burst, pause_s, cap):
        i = 0
        while i < cap and not self._stopped.is_set():
            for _ in range(burst):
                ts = int(time.time() * 1000) if self._wall_clock else i
                yield SourceFrame(i, ts, images[i % len(images)])
                i += 1
            self._stopped.wait(pause_s)

    def _run(self, kafka, topic, images, partition, burst, pause_s, cap):
        frames = self._frames(images, burst, pause_s, cap)
        while True:
            try:
                ends = produce_frames(kafka, topic, frames, stream=f"cam{partition}",
                                      partition=partition, stop=self._stopped.is_set)
            except Exception as exc:  # noqa: BLE001 - reported by stop(), with where it came from
                self.errors.append(_describe(exc))
                if self._restart and not self._stopped.wait(0.5):
                    continue  # a new producer, the same frames generator
                return
            for p, end in ends.items():
                self._ends[p] = max(end, self._ends.get(p, 0))
            return

    def stop(self, timeout_s=90):
        """Stop producing; return ``{partition: end offset}`` of everything produced."""
        self._stopped.set()
        for t in self._threads:
            t.join(timeout_s)
        assert not any(t.is_alive() for t in self._threads), "the producer threads hang"
        assert self._restart or not self.errors, self.errors
        return dict(self._ends)


def _describe(exc: BaseException) -> str:
    """The traceback of ``exc``; its repr where the traceback module cannot format it
    (confluent-kafka raises ``KafkaError`` itself for a fatal producer error, seen after a
    broker restart: a C type without ``__suppress_context__``, on which formatting fails)."""
    try:
        return "".join(traceback.format_exception(exc))
    except Exception:  # noqa: BLE001
        return f"{type(exc).__name__}: {exc!r}"
