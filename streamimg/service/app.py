"""The analysis service over HTTP: submit a video, follow it, browse its results and frames.

A FastAPI application (OpenAPI docs at ``/docs``) over the results database
(:class:`~streamimg.results.store.ResultsStore`) and the request topic that
``streamimg ingest`` consumes (:mod:`streamimg.sources.ingest`):

==========================================  ============================================
``POST /analyses``                          JSON ``{"source", "models", "frame_step",
                                            "limit"}`` or a multipart upload (``file``);
                                            201 ``{"id", "status"}``
``GET /analyses``                           every analysis's status, newest first
``GET /analyses/{id}``                      ``state`` (queued, running, done, failed),
                                            ``frames_ingested``, ``frames_done``,
                                            ``dead_letters``, ``started``, ``finished``
``GET /analyses/{id}/results``              a page of frame results (``offset``, ``limit``)
``GET /analyses/{id}/frames/{n}``           frame ``n`` annotated, as JPEG
``GET /analyses/{id}/frames/{n}/results``   frame ``n``'s analytics record
``GET /analyses/{id}/metrics``              frames, rate, stage timings (ms)
``GET /``                                   the web page
==========================================  ============================================

Errors are JSON ``{"error": "..."}`` naming the problem, with the fitting status: 404
for an unknown id or frame, 422 for a source that cannot be opened, an unknown model,
a bad ``frame_step``; 413 for an upload over the limit; 503 when the broker does not
take the request. A request is checked (the source opened) before anything is produced,
and produced before its row is written: nothing half-written stays in the database.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
import fsspec
from confluent_kafka import Producer
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response

from streamimg.config import KafkaConfig
from streamimg.results.store import ResultsStore
from streamimg.sources.ingest import RequestError, VideoRequest
from streamimg.sources.video import is_url

PAGE = Path(__file__).with_name("page.html")


@dataclass
class ServiceConfig:
    """What the service needs.

    ``models``: the analytics names the server's topology computes (a request may ask
    for these only); ``uploads``: folder for uploaded videos (the ingest job must see
    it); ``max_upload_bytes``: larger uploads get 413.
    """

    store: ResultsStore
    kafka: KafkaConfig
    requests_topic: str = "videos"
    models: tuple[str, ...] = ("faces", "palette")
    uploads: Path = field(default_factory=lambda: Path("uploads"))
    max_upload_bytes: int = 200 * 1024 * 1024
    probe_timeout_s: float = 10.0


def status(row: dict[str, Any]) -> dict[str, Any]:
    """The public status of an analysis row.

    The ingest job's ``done`` means every frame is ingested; the analysis is ``done``
    once every ingested frame has a result or a dead letter, ``running`` before.
    """
    state = row.get("state") or "queued"
    ingested, done = row.get("frames_ingested") or 0, row.get("frames_done") or 0
    dead = row.get("dead_letters") or 0
    if state == "done" and done + dead < ingested:
        state = "running"
    return {"id": row["id"], "state": state, "source": row.get("source"),
            "models": row.get("models") or [], "frame_step": row.get("frame_step"),
            "frames_ingested": ingested, "frames_done": done, "dead_letters": dead,
            "started": row.get("started"), "error": row.get("error") or None,
            "finished": row.get("finished") if state in ("done", "failed") else None}


def create_app(cfg: ServiceConfig) -> FastAPI:
    """The FastAPI application of the service (see the module docstring)."""
    app = FastAPI(title="streamimg analysis service",
                  description="Submit a video, follow it, browse results and frames.")
    producer: list[Producer] = []

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def bad_input(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ()))
        return JSONResponse({"error": f"{where}: {first.get('msg', 'invalid')}"},
                            status_code=422)

    def known(analysis: str) -> dict[str, Any]:
        row = cfg.store.analysis(analysis)
        if row is None:
            raise HTTPException(404, f"no analysis {analysis!r}")
        return row

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(PAGE.read_text())

    @app.get("/service")
    async def service() -> dict[str, Any]:
        """What this server offers: the model names a request may ask for, upload limit."""
        return {"models": list(cfg.models), "max_upload_bytes": cfg.max_upload_bytes,
                "requests_topic": cfg.requests_topic}

    @app.post("/analyses", status_code=201)
    async def submit(request: Request) -> dict[str, str]:
        """Start an analysis of a video URL/path (JSON) or an uploaded file (multipart)."""
        kind = request.headers.get("content-type", "")
        if kind.startswith("multipart/form-data"):
            form = await request.form()
            upload = form.get("file")
            if upload is None or not hasattr(upload, "read"):
                raise HTTPException(422, "file: a multipart upload needs a 'file' part")
            doc = {"models": form.getlist("models") or list(cfg.models),
                   "frame_step": _int(form.get("frame_step", 1), "frame_step")}
            vid = _new_id(getattr(upload, "filename", "") or "upload")
            doc["source"] = str(await _save(upload, cfg, vid))
        else:
            try:
                doc = await request.json()
            except ValueError:
                raise HTTPException(422, "body: not JSON (send JSON or a multipart upload)") \
                    from None
            if not isinstance(doc, dict):
                raise HTTPException(422, "body: must be a JSON object")
            doc.setdefault("models", list(cfg.models))
            vid = _new_id(str(doc.get("source", "")))
        unknown = [m for m in doc.get("models") or [] if m not in cfg.models] \
            if isinstance(doc.get("models"), list) else []
        if unknown:
            raise HTTPException(422, f"models: unknown {unknown}; this server runs "
                                     f"{list(cfg.models)}")
        try:
            req = VideoRequest.parse(vid.encode(), json.dumps({**doc, "id": vid}).encode())
        except RequestError as exc:
            raise HTTPException(422, str(exc)) from None
        try:
            await asyncio.to_thread(_probe, req.source, cfg.probe_timeout_s)
        except HTTPException:
            if kind.startswith("multipart/form-data"):  # keep no upload that is not a video
                upload_path = Path(req.source)
                upload_path.unlink(missing_ok=True)
                upload_path.parent.rmdir()
            raise
        await asyncio.to_thread(_send, producer, cfg, req)
        # The sink may have seen the ingest job's first status already: keep its state.
        cfg.store.upsert_analysis(req.id, source=req.source, models=list(req.models),
                                  frame_step=req.frame_step, state="queued",
                                  started=time.time(), keep=("state",))
        return {"id": req.id, "status": f"/analyses/{req.id}"}

    @app.get("/analyses")
    async def analyses() -> list[dict[str, Any]]:
        """Every analysis's status, newest first."""
        rows = cfg.store.list_analyses()
        return [status(r) for r in sorted(rows, key=lambda r: -(r.get("started") or 0))]

    @app.get("/analyses/{analysis}")
    async def analysis_status(analysis: str) -> dict[str, Any]:
        """One analysis's status."""
        return status(known(analysis))

    @app.get("/analyses/{analysis}/results")
    async def results(analysis: str, offset: int = Query(0, ge=0),
                      limit: int = Query(100, ge=1, le=1000)) -> dict[str, Any]:
        """A page of frame results, in frame order."""
        row = known(analysis)
        rows = cfg.store.results(analysis, offset=offset, limit=limit)
        return {"id": analysis, "offset": offset, "limit": limit,
                "frames_done": row.get("frames_done") or 0,
                "results": [_public(r) for r in rows]}

    def frame_row(analysis: str, n: int) -> dict[str, Any]:
        row = known(analysis)
        result = cfg.store.frame_result(analysis, n)
        if result is None:
            have = row.get("frames_done") or 0
            raise HTTPException(404, f"analysis {analysis!r} has no frame {n} "
                                     f"({have} frames done so far, numbered from 0)")
        return result

    @app.get("/analyses/{analysis}/frames/{n}",
             responses={200: {"content": {"image/jpeg": {}}}})
    async def frame_image(analysis: str, n: int) -> Response:
        """Frame ``n`` as annotated by the topology, JPEG."""
        result = frame_row(analysis, n)
        if not result.get("image"):
            raise HTTPException(404, f"frame {n} of {analysis!r} has no annotated image yet")
        with fsspec.open(result["image"], "rb") as f:
            data = f.read()
        return Response(data, media_type="image/jpeg")

    @app.get("/analyses/{analysis}/frames/{n}/results")
    async def frame_results(analysis: str, n: int) -> dict[str, Any]:
        """Frame ``n``'s analytics record."""
        return _public(frame_row(analysis, n))

    @app.get("/analyses/{analysis}/metrics")
    async def metrics(analysis: str) -> dict[str, Any]:
        """Frames, the analysed span of capture time and the rate, stage timings (ms)."""
        row = known(analysis)
        rows = cfg.store.results(analysis, offset=0, limit=1_000_000)
        stamps = [r["timestamp_ms"] for r in rows if r.get("timestamp_ms") is not None]
        span_s = (max(stamps) - min(stamps)) / 1e3 if len(stamps) > 1 else 0.0
        stages: dict[str, list[float]] = {}
        for r in rows:
            for stage, ms in (r.get("timings") or {}).items():
                stages.setdefault(stage, []).append(float(ms))
        return {**status(row), "capture_span_s": span_s,
                "frames_per_capture_s": (len(stamps) - 1) / span_s if span_s else None,
                "stage_ms": {k: {"mean": sum(v) / len(v), "max": max(v)}
                             for k, v in sorted(stages.items())}}

    return app


def _public(result: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in result.items() if k not in ("image",)}
    out["image"] = (f"/analyses/{result['analysis']}/frames/{result['frame']}"
                    if result.get("image") else None)
    return out


def _int(value: Any, name: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise HTTPException(422, f"{name}: not an integer: {value!r:.40}") from None


def _new_id(source: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(source.split("?")[0]).stem)[:40].strip("-.")
    return f"{stem or 'video'}-{uuid.uuid4().hex[:8]}"


async def _save(upload: Any, cfg: ServiceConfig, vid: str) -> Path:
    """Save an upload under ``cfg.uploads/<id>/``; 413 past the size limit (nothing kept)."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(upload.filename or "video").name) or "video"
    path = cfg.uploads.resolve() / vid / name
    path.parent.mkdir(parents=True, exist_ok=True)
    size = 0
    with open(path, "wb") as out:
        while chunk := await upload.read(1 << 20):
            size += len(chunk)
            if size > cfg.max_upload_bytes:
                out.close()
                path.unlink()
                path.parent.rmdir()
                raise HTTPException(413, f"file: larger than {cfg.max_upload_bytes:,} bytes")
            out.write(chunk)
    return path


def _probe(source: str, timeout_s: float) -> None:
    """Open ``source`` and decode its first frame; 422 naming why it cannot be."""
    if not is_url(source) and not Path(source).is_file():
        raise HTTPException(422, f"source: {source} does not exist on the server")
    try:
        with av.open(source, timeout=timeout_s if is_url(source) else None) as container:
            if not container.streams.video:
                raise HTTPException(422, f"source: {source} has no video stream")
            next(container.decode(container.streams.video[0]))
    except HTTPException:
        raise
    except (av.FFmpegError, OSError, StopIteration, ValueError) as exc:
        raise HTTPException(422, f"source: cannot open {source} as a video: "
                                 f"{type(exc).__name__}: {exc}") from None


def _send(producer: list[Producer], cfg: ServiceConfig, req: VideoRequest) -> None:
    """Produce the request (idempotent, acks=all); 503 if the broker does not take it."""
    if not producer:
        producer.append(Producer({**cfg.kafka.producer(), "enable.idempotence": True,
                                  "acks": "all"}))
    errors: list[str] = []
    producer[0].produce(cfg.requests_topic, key=req.id.encode(), value=req.to_json(),
                        on_delivery=lambda err, msg: errors.append(str(err)) if err else None)
    if producer[0].flush(10.0) > 0 or errors:
        raise HTTPException(503, f"the broker did not take the request within 10 s "
                                 f"({errors[0] if errors else 'timeout'})")
