"""The analysis service end to end: `streamimg serve --embedded` and its HTTP API and page.

One real service for the module, as a user starts it: a `streamimg serve --embedded`
process starting its own broker, the ingest job, the topology's daemon and the results
sink (child processes) over a SQLite file. The API is driven over loopback HTTP and the
page in Debian's Chromium (Playwright); a screenshot goes to test-artefacts/.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import sys
import uuid

import cv2
import httpx
import numpy as np
import pytest

from streamimg.broker import free_port
from tests.helpers import ROOT, clip, stop_process, wait_until

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTEFACTS = ROOT / "test-artefacts"
CLIP = clip("carphone_pristine.mp4")  # 176x144, 120 frames
TOPOLOGY = '''
from streamimg import Topology

topology = Topology("svc", inputs="frames", max_frames=4, max_wait_ms=50)
(topology.source
    .palette(k=3, sample=2_000)
    .to_kafka_analytics()
    .annotate(detections=None, palette="palette")
    .to_kafka_frames(encoding="jpeg"))
'''


@contextlib.contextmanager
def running_service(work, db=None):
    """`streamimg serve --embedded` on a free port (``db``: a database URL, else SQLite)."""
    (work / "t.py").write_text(TOPOLOGY)
    port = free_port()
    log = work / "serve.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamimg.cli", "serve", "--embedded", "--topology",
             str(work / "t.py"), "--workdir", str(work / "w"), "--port", str(port),
             "--max-upload-mb", "1", "--kafka", "session.timeout.ms=6000",
             *(["--db", db] if db else [])],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"

    def up():
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            return httpx.get(f"{url}/service", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(up, 120, "the service to answer")
        yield url, work
    finally:
        code = stop_process(proc, signal.SIGTERM, timeout_s=90)
        jobs = (work / "w")
        assert code == 0, log.read_text()[-2000:] + "".join(
            (jobs / f"{j}.log").read_text()[-1500:] for j in ("ingest", "daemon", "results")
            if (jobs / f"{j}.log").exists())


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    with running_service(tmp_path_factory.mktemp("service")) as running:
        yield running


def submit(url, **body):
    return httpx.post(f"{url}/analyses", json=body, timeout=30)


def wait_done(url, aid, timeout_s=180):
    def done():
        s = httpx.get(f"{url}/analyses/{aid}", timeout=5).json()
        assert s["state"] != "failed", s
        return s["state"] == "done"
    wait_until(done, timeout_s, f"analysis {aid} to finish", interval_s=0.5)
    return httpx.get(f"{url}/analyses/{aid}", timeout=5).json()


@pytest.mark.timeout(400)
def test_a_submitted_video_is_analysed_and_browsable(service):
    url, work = service
    assert httpx.get(f"{url}/service").json()["models"] == ["palette"]
    r = submit(url, source=str(CLIP), models=["palette"], frame_step=6)
    assert r.status_code == 201, r.text
    aid = r.json()["id"]
    status = wait_done(url, aid)
    assert status["frames_ingested"] == status["frames_done"] == 20  # 120 frames, step 6
    assert status["dead_letters"] == 0 and status["finished"] >= status["started"]
    assert aid in [a["id"] for a in httpx.get(f"{url}/analyses").json()]

    page = httpx.get(f"{url}/analyses/{aid}/results", params={"offset": 5, "limit": 5}).json()
    assert [r["frame"] for r in page["results"]] == [5, 6, 7, 8, 9]
    record = page["results"][0]["record"]
    assert record["stream"] == aid and len(record["palette"]["colors"]) == 3

    jpeg = httpx.get(f"{url}/analyses/{aid}/frames/3")
    assert jpeg.status_code == 200 and jpeg.headers["content-type"] == "image/jpeg"
    image = cv2.imdecode(np.frombuffer(jpeg.content, np.uint8), cv2.IMREAD_COLOR)
    assert image.shape == (144 + 18, 176, 3)  # the frame and its palette strip (h // 8)
    one = httpx.get(f"{url}/analyses/{aid}/frames/3/results").json()
    assert one["frame"] == 3 and one["image"] == f"/analyses/{aid}/frames/3"
    metrics = httpx.get(f"{url}/analyses/{aid}/metrics").json()
    assert metrics["frames_done"] == 20 and metrics["capture_span_s"] > 0

    # Bad input: the right status and a JSON error naming the problem.
    for resp, code, words in (
            (httpx.get(f"{url}/analyses/{aid}/frames/20"), 404, "no frame 20"),
            (httpx.get(f"{url}/analyses/nope"), 404, "no analysis 'nope'"),
            (submit(url, source=str(CLIP), models=["gender"]), 422, "unknown ['gender']"),
            (submit(url, source=str(work / "none.mp4")), 422, "does not exist"),
            (submit(url, source="http://127.0.0.1:1/x.mp4"), 422, "cannot open"),
            (submit(url, source=str(CLIP), frame_step=0), 422, "frame_step"),
            (httpx.get(f"{url}/analyses/{aid}/results", params={"limit": 0}), 422, "limit")):
        assert resp.status_code == code, resp.text
        assert words in resp.json()["error"], resp.json()


@pytest.mark.timeout(300)
def test_uploads_are_checked_before_anything_is_produced(service):
    url, work = service
    before = len(httpx.get(f"{url}/analyses").json())
    text = httpx.post(f"{url}/analyses", files={"file": ("notes.mp4", b"not a video")})
    assert text.status_code == 422 and "cannot open" in text.json()["error"]
    big = httpx.post(f"{url}/analyses", files={"file": ("big.mp4", b"\0" * (2 << 20))})
    assert big.status_code == 413 and "larger than 1,048,576 bytes" in big.json()["error"]
    assert len(httpx.get(f"{url}/analyses").json()) == before  # nothing half-written
    assert not any((work / "w" / "uploads").glob("*/*"))
    small = CLIP.read_bytes()
    assert len(small) < 1 << 20
    r = httpx.post(f"{url}/analyses", files={"file": ("phone call.mp4", small)},
                   data={"frame_step": "30", "models": "palette"})
    assert r.status_code == 201, r.text
    assert wait_done(url, r.json()["id"])["frames_done"] == 4


@pytest.mark.timeout(300)
def test_the_page_submits_a_video_and_shows_its_frames_in_chromium(service):
    from playwright.sync_api import sync_playwright

    assert CHROMIUM, "Debian's chromium is not installed: `make test` installs it"
    url, _ = service
    ARTEFACTS.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 1000})
            page.goto(url, timeout=30_000)
            page.wait_for_selector("input[name=model][value=palette]", timeout=30_000)
            page.fill("#source", str(CLIP))
            page.fill("#step", "10")
            page.click("button[type=submit]")
            page.wait_for_function("document.querySelector('#message').textContent"
                                   ".startsWith('submitted')", timeout=30_000)
            page.wait_for_function("document.querySelector('#state') &&"
                                   " document.querySelector('#state').textContent === 'done'",
                                   timeout=180_000)
            page.click("#next")
            page.click("#next")
            page.wait_for_function("document.querySelector('#img').complete &&"
                                   " document.querySelector('#img').naturalWidth === 176 &&"
                                   " document.querySelector('#img').src.endsWith('/frames/2')",
                                   timeout=30_000)
            assert page.locator("#palette .swatch").count() == 3
            assert "frame: 2" in page.inner_text("#record").splitlines()
            page.screenshot(path=str(ARTEFACTS / "streamimg-service.png"), full_page=True)
        finally:
            browser.close()


@pytest.mark.timeout(300)
def test_the_service_on_postgresql(postgres, tmp_path):
    """The same service over a real PostgreSQL (Debian's server, started by the tests)."""
    import psycopg

    name = f"svc_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres.replace("+psycopg", "") + "/postgres", autocommit=True) as c:
        c.execute(f"CREATE DATABASE {name}")
    with running_service(tmp_path, db=f"{postgres}/{name}") as (url, _):
        r = submit(url, source=str(CLIP), frame_step=30)
        assert r.status_code == 201, r.text
        aid = r.json()["id"]
        assert wait_done(url, aid)["frames_done"] == 4
        page = httpx.get(f"{url}/analyses/{aid}/results", params={"limit": 2}).json()
        assert [x["frame"] for x in page["results"]] == [0, 1]
        assert httpx.get(f"{url}/analyses/{aid}/frames/3").headers["content-type"] == \
            "image/jpeg"
        assert httpx.get(f"{url}/analyses/{aid}/frames/4").status_code == 404
    with psycopg.connect(postgres.replace("+psycopg", "") + f"/{name}") as c:
        rows = c.execute("SELECT count(*), count(DISTINCT frame) FROM frame_results "
                         "WHERE analysis = %s", (aid,)).fetchone()
    assert rows == (4, 4)
