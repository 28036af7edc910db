"""Frames produced at a steady pace from background threads, for tests of a live stream."""

from __future__ import annotations

import threading
import time

from streamimg.sources.video import SourceFrame, produce_frames


class PacedStream:
    """Frames into both partitions of ``topic`` from background threads, in bursts, until
    :meth:`stop` (or ``cap`` frames per partition); :meth:`stop` returns the end offsets."""

    def __init__(self, kafka, topic, images, burst=4, pause_s=0.8, cap=600, wall_clock=False):
        self._wall_clock = wall_clock  # capture times: now (ms since the epoch), else i ms
        self._stopped = threading.Event()
        self._ends, self._errors = {}, []
        self._threads = [threading.Thread(target=self._run, daemon=True,
                                          args=(kafka, topic, images, p, burst, pause_s, cap))
                         for p in (0, 1)]
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
        try:
            self._ends.update(produce_frames(
                kafka, topic, self._frames(images, burst, pause_s, cap),
                stream=f"cam{partition}", partition=partition, stop=self._stopped.is_set))
        except Exception as exc:  # noqa: BLE001 - reported by stop()
            self._errors.append(exc)

    def stop(self, timeout_s=90):
        """Stop producing; return ``{partition: end offset}`` of everything produced."""
        self._stopped.set()
        for t in self._threads:
            t.join(timeout_s)
        assert not any(t.is_alive() for t in self._threads), "the producer threads hang"
        assert not self._errors, self._errors
        return dict(self._ends)
