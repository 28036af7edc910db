"""The ``/streamimg`` page of the Dask dashboard, in a real browser, on a real cluster.

Two daemon instances of one topology share a consumer group on a ``dask scheduler``
with two ``dask worker`` processes (scale-out as users run it); frames stream in at a
steady pace; headless Chromium (Debian's ``chromium``, driven by Playwright) opens the
page on the scheduler's dashboard port. One instance is stopped and started again
while the page is open. At the end every frame is checked exactly once.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from distributed import Client

from streamimg.admin import committed_offsets, ensure_topics
from tests.harness.checker import check_exactly_once
from tests.harness.paced import PacedStream
from tests.harness.procs import DaskProcesses
from tests.helpers import ROOT, start_daemon, stop_process, wait_until, write_topology

CHAOS = os.environ.get("STREAMIMG_CHAOS") == "1"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTEFACTS = ROOT / "test-artefacts"
BODY = (".gaussian_blur(sigma=1.0).palette(k=4).to_kafka_analytics()"
        ".annotate(detections=None, palette='palette').to_kafka_frames(encoding='jpeg')")

def state(port: int) -> dict:
    """The page's JSON; no instances while no daemon has registered the page yet (404)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/streamimg/state.json",
                                    timeout=10) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return {"instances": []}
        raise


def instance(port: int, name: str) -> dict:
    found = [s for s in state(port)["instances"] if s["instance"] == name]
    return found[0] if found else {}


def figure(page, card: str, key: str) -> str:
    return page.locator(f'[data-instance="{card}"] [data-k="{key}"]').inner_text(timeout=10_000)


def as_int(text: str) -> int:
    return int(re.sub(r"[^\d]", "", text) or 0)


@pytest.mark.timeout(420)
def test_the_streamimg_page_shows_two_instances_live_in_chromium(kafka, bikes, tmp_path, uid):
    from playwright.sync_api import sync_playwright

    assert CHROMIUM, "Debian's chromium is not installed: `make test` installs it"
    topic, name = f"in-{uid}", f"dash-{uid}"
    ensure_topics(kafka, [topic], partitions=2)
    path = write_topology(tmp_path / "t.py", name, topic, BODY, max_frames=4, max_wait_ms=30)
    images = bikes[:20]
    ARTEFACTS.mkdir(exist_ok=True)
    shot = ARTEFACTS / "streamimg-dashboard.png"
    card0, card1 = f"{name}/0", f"{name}/1"
    procs: list = []
    with DaskProcesses(tmp_path, n_workers=2) as dask:
        port = dask.dashboard_port
        stream = PacedStream(kafka, topic, images, burst=2, pause_s=0.25, wall_clock=True)
        try:
            for i in ("0", "1"):
                procs.append(start_daemon(path, kafka, None, tmp_path / f"d{i}.log",
                                          instance=i, scheduler=dask.address))
            # Both instances report, and both own a partition (the group has settled).
            def alive():
                dead = [p.args for p in procs if p.poll() is not None]
                assert not dead, f"a daemon exited: {dead}"
                return True

            wait_until(lambda: alive() and all(instance(port, i).get("partitions") and
                                   instance(port, i)["totals"]["frames_out"] > 0
                                   for i in ("0", "1")),
                       180, "both instances to report committed frames", interval_s=0.5)
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=CHROMIUM, args=[
                    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update",
                    "--disable-sync"])
                try:
                    page = browser.new_page(viewport={"width": 1400, "height": 1100})
                    page.goto(f"http://127.0.0.1:{port}/streamimg", timeout=30_000)
                    page.wait_for_selector(f'[data-instance="{card1}"]', timeout=30_000)
                    first = as_int(figure(page, card0, "frames_out"))
                    # The numbers change while the page is open (it refreshes every second).
                    wait_until(lambda: as_int(figure(page, card0, "frames_out")) > first, 60,
                               "the page's committed frames to grow", interval_s=0.5)
                    assert page.locator(f'[data-instance="{card0}"] '
                                        '[data-stage="gaussian_blur"]').count() == 1
                    latency = figure(page, card0, "latency")
                    p50, _, p99 = (as_int(v) for v in latency.split(" / "))
                    assert 0 < p50 <= p99 < 60_000, latency  # ms, capture to commit
                    # A thumbnail of an annotated output frame renders, 320 px wide.
                    wait_until(lambda: page.evaluate(
                        "() => [...document.querySelectorAll('.stream img')]"
                        ".filter(i => i.complete && i.naturalWidth === 320).length") >= 2,
                        30, "two thumbnails to render", interval_s=0.5)
                    assert page.locator(".swatches").count() >= 2  # the palettes
                    page.screenshot(path=str(shot), full_page=True)

                    # Stop instance 1: its card says so; started again, it reports a new run
                    # (make chaos only: ~25 s of group rejoins).
                    if CHAOS:
                        old_run = instance(port, "1")["run"]
                        assert stop_process(procs[1], signal.SIGTERM, 60) == 0
                        wait_until(lambda: "stopped" in figure_badge(page, card1), 30,
                                   "the page to show instance 1 stopped", interval_s=0.5)
                        procs[1] = start_daemon(path, kafka, None, tmp_path / "d1b.log",
                                                instance="1", scheduler=dask.address)
                        wait_until(lambda: instance(port, "1").get("run") not in (None, old_run)
                                   and instance(port, "1")["state"] == "running"
                                   and instance(port, "1")["totals"]["frames_out"] > 0,
                                   180, "instance 1 to report again with a new run",
                                   interval_s=0.5)
                        wait_until(lambda: "running" in figure_badge(page, card1)
                                   and as_int(figure(page, card1, "frames_out")) > 0, 30,
                                   "the page to show instance 1 committing again", interval_s=0.5)
                        page.screenshot(path=str(ARTEFACTS / "streamimg-dashboard-restart.png"),
                                        full_page=True)
                finally:
                    browser.close()
            # Dask's own pages link to the page, and the task stream reads as the topology.
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=30) as r:
                assert 'href="streamimg"' in r.read().decode()
            with Client(dask.address, timeout="30s") as client:
                prefixes = client.run_on_scheduler(
                    lambda dask_scheduler: list(dask_scheduler.task_prefixes))
            assert f"{name.replace('-', '_')}:decode>gaussian_blur>palette>annotate>encode" \
                in prefixes, prefixes
            # Every frame exactly once in both outputs, across the instances and the restart.
            inputs = {(topic, p): end for p, end in stream.stop().items()}
            wait_until(lambda: all(committed_offsets(kafka, name, [topic]).get(tp, -1) >= end
                                   for tp, end in inputs.items()),
                       180, "the group's offsets to reach the end of the input", interval_s=0.5)
        finally:
            stream.stop()
            for proc in procs:
                if proc.poll() is None:
                    stop_process(proc, signal.SIGTERM, 60)
    report = check_exactly_once(kafka.bootstrap, inputs=inputs,
                                outputs=[f"{name}.frames", f"{name}.analytics"],
                                dlq=f"{name}.dlq", group=name)
    assert report.ok, report.summary()
    assert Path(shot).stat().st_size > 20_000


def figure_badge(page, card: str) -> str:
    return page.locator(f'[data-instance="{card}"] .badge').inner_text(timeout=10_000)


@pytest.mark.timeout(120)
def test_a_preloaded_scheduler_serves_the_page_before_any_daemon(tmp_path):
    """``dask scheduler --preload streamimg.dashboard.page`` (as docker-compose.yml runs it)."""
    with DaskProcesses(tmp_path, n_workers=0,
                       scheduler_args=("--preload", "streamimg.dashboard.page")) as dask:
        port = dask.dashboard_port
        wait_until(lambda: state(port).get("now"), 60, "the page's JSON", interval_s=0.5)
        assert state(port)["instances"] == []
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/streamimg", timeout=30) as r:
            assert "<title>Dask: streamimg</title>" in r.read().decode()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=30) as r:
            assert 'href="streamimg"' in r.read().decode()
