"""``birdsound serve``: an HTTP analysis endpoint and a live web dashboard, on the same pipeline.

An ASGI app (FastAPI on uvicorn, the ``serve`` extra) over the existing drivers, never a second
pipeline:

* ``POST /v1/analyze``: an audio file as the body (or multipart field ``file``); query parameters
  are analyze's options. The answer is byte for byte what ``birdsound analyze --rtype json`` writes
  for that file. Uploads stream to a private temporary folder (size-limited), are decoded and scored
  on a bounded pool of worker threads (off the event loop), and are always deleted. Requests beyond
  ``max_inflight`` get 503 with ``Retry-After``.
* ``GET /v1/model``, ``GET /healthz``, ``GET /openapi.json`` and ``GET /docs`` (a plain HTML page, no CDN).
* ``GET /`` with ``--device``: the dashboard. The live pipeline of ``listen`` (same windower, model,
  confirmation, SQLite log and clips) runs in a thread; Server-Sent Events (``/v1/live/events``)
  carry spectrogram columns, detections and status to every open page. History, today's tally and
  clips come from the SQLite log.

Errors are JSON ``{"error": message, "status": code}``; no traceback ever reaches a client.
Binding an address other than loopback requires a bearer token (``--token``) unless
``--insecure-no-auth`` is given; tokens are compared in constant time. No request names a server
path: clips are looked up by file name inside the clips folder only.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hmac
import json
import os
import re
import shutil
import sqlite3
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib.resources import files

import numpy as np
from fastapi import Request  # the serve extra; FastAPI resolves handler annotations by module name

from . import audio, outputs
from .analyze import AnalyzeOptions, analyze_chunk, file_result, plan_chunks
from .detect import DEFAULT_MIN_CONF, DetectOptions, closest_label, label_matcher
from .runtime import Classifier
from .stream import hop_samples

LOOPBACK = ("127.0.0.1", "::1", "localhost")
CLIP_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*\.wav$")
SPEC_FFT = 1024
SPEC_BINS = 128
SPEC_DB = (-110.0, -30.0)  # dB range mapped to 0..255 in the dashboard's spectrogram
EVENT_QUEUE = 256  # events a slow browser may lag behind before it is dropped
ANALYZE_PARAMS = {"min_conf", "overlap", "sensitivity", "top_n", "include", "exclude", "merge", "fmin", "fmax",
                  "channel", "filename", "token"}


class ServeError(Exception):
    """A request that cannot be served: HTTP `status` and a one-line message."""

    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


@dataclass
class ServeOptions:
    host: str = "127.0.0.1"
    port: int = 8000
    token: str | None = None
    insecure_no_auth: bool = False
    max_mb: float = 200.0  # largest upload
    max_s: float = 3600.0  # longest audio
    workers: int = 2  # analysis threads
    max_inflight: int = 8  # requests being analysed or waiting; more get 503
    device: str | None = None
    log_path: str | None = None
    clips_dir: str | None = None
    live_overlap_s: float = 0.0
    min_hits: int = 1
    within_s: float = 15.0
    cooldown_s: float = 10.0


def check_bind(opts: ServeOptions) -> None:
    """Refuse an address other than loopback without a token (unless explicitly insecure)."""
    if opts.host not in LOOPBACK and not opts.token and not opts.insecure_no_auth:
        raise ServeError(2, f"--host {opts.host}: serving beyond this machine needs --token (every request must then "
                            "carry 'Authorization: Bearer TOKEN'), or --insecure-no-auth to serve without one")


# ------------------------------------------------------------------ analysis

class Analyzer:
    """Uploads -> the same JSON as ``analyze --rtype json``, on a bounded pool of threads."""

    def __init__(self, model: Classifier, opts: ServeOptions):
        self.model, self.opts = model, opts
        self.pool = ThreadPoolExecutor(max(1, opts.workers), thread_name_prefix="birdsound-serve")
        self.inflight = 0
        self.lock = threading.Lock()
        self.tmp = tempfile.mkdtemp(prefix="birdsound-serve-")
        self.meta = model.meta.to_dict()

    def close(self) -> None:
        self.pool.shutdown(cancel_futures=True)
        shutil.rmtree(self.tmp, ignore_errors=True)

    def admit(self) -> None:
        with self.lock:
            if self.inflight >= self.opts.max_inflight:
                raise ServeError(503, f"busy: {self.inflight} requests in flight (limit {self.opts.max_inflight}); "
                                      "retry shortly", {"Retry-After": "1"})
            self.inflight += 1

    def release(self) -> None:
        with self.lock:
            self.inflight -= 1

    def options(self, q: dict[str, list[str]]) -> tuple[AnalyzeOptions, str | None]:
        """Analyze options from query parameters; unknown or invalid ones are a 422."""
        unknown = sorted(set(q) - ANALYZE_PARAMS)
        if unknown:
            raise ServeError(422, f"unknown parameter(s) {', '.join(unknown)}; known: "
                                  f"{', '.join(sorted(ANALYZE_PARAMS - {'token'}))}")

        def one(name, conv, lo=None, hi=None, default=None):
            if name not in q:
                return default
            raw = q[name][-1]
            try:
                v = conv(raw)
            except ValueError:
                raise ServeError(422, f"{name}={raw!r}: not a {conv.__name__}") from None
            if (lo is not None and v < lo) or (hi is not None and v > hi):
                raise ServeError(422, f"{name}={raw}: must be between {lo} and {hi}")
            return v

        meta = self.model.meta
        labels = meta.labels
        min_conf = one("min_conf", float, 0.0, 1.0, DEFAULT_MIN_CONF)
        overlap = one("overlap", float, 0.0, meta.window_s - 0.1, 0.0)
        sens = one("sensitivity", float, 0.5, 1.5, 1.0)
        top_n = one("top_n", int, 1, len(labels), None)
        fmin = one("fmin", float, 0.0, meta.sample_rate / 2 - 1, None)
        fmax = one("fmax", float, 1.0, None, None)
        channel = one("channel", int, 1, 1024, None)
        merge = one("merge", _bool, None, None, False)
        if fmin is not None and fmax is not None and fmin >= fmax:
            raise ServeError(422, f"fmin={fmin:g} must be below fmax={fmax:g}")
        match = label_matcher(labels)

        def species(name):
            names = [n.strip() for v in q.get(name, []) for n in v.split(",") if n.strip()]
            bad = [n for n in names if n.lower() not in match]
            if bad:
                hints = [f"'{n}'" + (f" (did you mean '{c}'?)" if (c := closest_label(n, labels)) else "") for n in bad]
                raise ServeError(422, f"{name}: unknown species {', '.join(hints)}")
            return frozenset(match[n.lower()] for n in names) if names else None

        include, exclude = species("include"), species("exclude")
        det = DetectOptions(min_conf=min_conf, sensitivity=sens, top_n=top_n, include=include,
                            exclude=exclude or frozenset())
        filename = q["filename"][-1] if "filename" in q else None
        return AnalyzeOptions(overlap_s=overlap, channel=channel - 1 if channel else None, fmin_hz=fmin,
                              fmax_hz=fmax, merge=merge, detect=det), filename

    def analyze_file(self, path: str, name: str, opts: AnalyzeOptions) -> tuple[str, list[str]]:
        """(JSON text, warnings) for one uploaded file: the analyze CLI's JSON output."""
        try:
            info = audio.info(path)
        except audio.AudioError as e:
            msg = str(e).replace(path, name)
            raise ServeError(400 if "empty file" in msg else 415, msg) from None
        if info.channels and opts.channel is not None and opts.channel >= info.channels:
            raise ServeError(422, f"channel={opts.channel + 1}: the file has {info.channels}")
        if info.duration_s > self.opts.max_s:
            raise ServeError(413, f"{name}: {info.duration_s:.0f} s of audio; this server takes at most "
                                  f"{self.opts.max_s:.0f} s per request")
        meta = self.model.meta
        hop = hop_samples(meta.window_samples, opts.overlap_s, meta.sample_rate)
        chunks = plan_chunks(path, info, meta.sample_rate, meta.window_samples, hop)
        try:
            results = [analyze_chunk(self.model, c, opts) for c in chunks]
        except audio.AudioError as e:
            raise ServeError(422, str(e).replace(path, name)) from None
        res = file_result(path, results, opts, meta)
        res.path = name
        warnings = []
        if info.claimed_frames and info.claimed_frames > info.frames:
            warnings.append(f"{name}: the header promises {info.claimed_frames / info.sample_rate:.3f} s of audio, "
                            f"the data holds {info.duration_s:.3f} s (file cut short?); analysed what is there")
        return outputs.render("json", [res], self.meta), warnings


def _bool(v: str) -> bool:
    if v.lower() in ("1", "true", "yes", "on"):
        return True
    if v.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(v)


_bool.__name__ = "boolean"


# ------------------------------------------------------------------ live

class LiveHub:
    """The live pipeline of ``listen`` in a thread, broadcast to every open page as events.

    A page that falls too far behind (its queue is full) is dropped; nobody watching costs nothing
    but the pipeline itself, which runs whether or not anyone watches.
    """

    def __init__(self, model: Classifier, opts: ServeOptions, detect_opts: DetectOptions):
        self.model, self.opts, self.detect_opts = model, opts, detect_opts
        self.subscribers: set[tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = set()
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None
        self.status = {"state": "starting", "device": opts.device, "message": ""}
        self.recent: list[dict] = []  # this run's detections (also without a log)
        self.spec_buf = np.zeros(0, np.float32)
        self.window = np.hanning(SPEC_FFT).astype(np.float32)
        self.session = None

    # -- events
    def subscribe(self, loop) -> asyncio.Queue:
        q: asyncio.Queue = asyncio.Queue(EVENT_QUEUE)
        with self.lock:
            self.subscribers.add((loop, q))
        return q

    def unsubscribe(self, loop, q) -> None:
        with self.lock:
            self.subscribers.discard((loop, q))

    def publish(self, kind: str, data: dict) -> None:
        msg = f"event: {kind}\ndata: {json.dumps(data)}\n\n"
        with self.lock:
            subs = list(self.subscribers)
        for loop, q in subs:
            def put(q=q, loop=loop):
                if q.full():
                    self.unsubscribe(loop, q)
                    q.put_nowait(None)  # never blocks: full means the page is gone or stuck
                else:
                    q.put_nowait(msg)
            try:
                loop.call_soon_threadsafe(put)
            except RuntimeError:  # the loop is closed
                self.unsubscribe(loop, q)

    # -- pipeline
    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, name="birdsound-live", daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join(timeout=10)

    def _set_status(self, state: str, message: str = "") -> None:
        self.status = {"state": state, "device": self.status.get("device"), "message": message}
        self.publish("status", self.status)

    def _on_session(self, session) -> None:
        self.session = session
        session.listeners.append(self._on_detection)
        session.taps.append(self._on_audio)
        self.status["device"] = session.device_name
        self._set_status("listening", f"listening on '{session.device_name}'")

    def _on_detection(self, d, clip: str | None = None) -> None:
        s = self.session
        when = dt.datetime.fromtimestamp(s.t0 + d.start_s)
        item = {"time": when.isoformat(timespec="seconds"), "clock": when.strftime("%H:%M:%S"),
                "offset_s": round(d.start_s, 2), "end_s": round(d.end_s, 2), "label": d.label,
                "scientific_name": d.scientific, "common_name": d.common, "confidence": round(d.confidence, 4),
                "clip": s.clip_for(d) if s.live.clips_dir else None}
        self.recent.append(item)
        del self.recent[:-500]
        self.publish("detection", item)

    def clip_pending(self, name: str) -> float:
        """Seconds until the clip `name` is written (its post-roll still being recorded), 0.0 if it is not
        pending."""
        s = self.session
        if s is None or not s.live.clips_dir:
            return 0.0
        for d in list(s.pending):
            if s.clip_for(d) == name:
                return max(0.0, d.end_s + s.live.post_roll_s - s.position / s.sr) + 0.5
        return 0.0

    def _on_audio(self, x: np.ndarray) -> None:
        """Spectrogram columns (uint8, 0..255 over SPEC_DB) of model-rate audio, SPEC_FFT per column."""
        buf = np.concatenate([self.spec_buf, x])
        n = len(buf) // SPEC_FFT
        self.spec_buf = buf[n * SPEC_FFT:]
        if not n:
            return
        frames = buf[: n * SPEC_FFT].reshape(n, SPEC_FFT) * self.window
        p = np.abs(np.fft.rfft(frames, axis=1)[:, 1:]) ** 2 / (SPEC_FFT * SPEC_FFT / 4)
        sr = self.model.meta.sample_rate
        top = int(len(p[0]) * min(1.0, self.model.meta.fmax_hz / (sr / 2)))
        p = p[:, :top - top % SPEC_BINS].reshape(n, SPEC_BINS, -1).mean(axis=2)
        db = 10 * np.log10(p + 1e-20)
        lo, hi = SPEC_DB
        cols = np.clip((db - lo) / (hi - lo) * 255, 0, 255).astype(np.uint8)
        self.publish("spectrogram", {"columns": n, "bins": SPEC_BINS, "seconds_per_column": SPEC_FFT / sr,
                                     "data": base64.b64encode(cols.tobytes()).decode()})

    def _run(self) -> None:
        from .listen import LiveError, LiveOptions, listen

        o = self.opts
        live = LiveOptions(o.live_overlap_s, None, o.min_hits, o.within_s, o.cooldown_s, o.log_path, o.clips_dir)
        try:
            s = listen(self.model, self.detect_opts, o.device, live, echo=lambda m: None,
                       stop_event=self.stop, on_session=self._on_session)
            if s.error:
                self._set_status("stopped", s.error)
            else:
                self._set_status("stopped", "the microphone was stopped")
        except LiveError as e:
            self._set_status("error", str(e))
        except Exception as e:  # noqa: BLE001 - the server goes on; the page says why the microphone stopped
            self._set_status("error", f"live pipeline failed ({type(e).__name__}: {e})")


def read_history(log_path: str | None, day: dt.date | None = None, limit: int = 500) -> list[dict]:
    """Detections of `day` (default: all) from the SQLite log, newest first."""
    if not log_path or not os.path.exists(log_path):
        return []
    db = sqlite3.connect(f"file:{log_path}?mode=ro", uri=True)
    try:
        cols = [r[1] for r in db.execute("PRAGMA table_info(detections)")]
        clip = "clip" if "clip" in cols else "NULL"
        rows = db.execute(f"SELECT start_utc, stream_start_s, scientific_name, common_name, confidence, {clip} "
                          "FROM detections ORDER BY id DESC LIMIT ?", (limit * 4 if day else limit,)).fetchall()
    finally:
        db.close()
    out = []
    for start, off, sci, com, conf, clip_name in rows:
        when = dt.datetime.fromisoformat(start).astimezone()
        if day is not None and when.date() != day:
            continue
        out.append({"time": when.isoformat(timespec="seconds"), "clock": when.strftime("%H:%M:%S"),
                    "offset_s": off, "label": f"{sci}_{com}", "scientific_name": sci, "common_name": com,
                    "confidence": conf, "clip": clip_name})
    return out[:limit]


def tally(items: list[dict]) -> list[dict]:
    counts: dict[str, dict] = {}
    for it in items:
        c = counts.setdefault(it["label"], {"label": it["label"], "common_name": it["common_name"], "detections": 0,
                                            "best_confidence": 0.0, "last": it["clock"]})
        c["detections"] += 1
        c["best_confidence"] = max(c["best_confidence"], it["confidence"])
    return sorted(counts.values(), key=lambda c: (-c["detections"], c["label"]))


# ------------------------------------------------------------------ app

def create_app(model: Classifier, opts: ServeOptions, detect_opts: DetectOptions | None = None,
               start_live: bool = True):
    """The ASGI app. With ``opts.device``, the live pipeline starts with the app."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response, StreamingResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    analyzer = Analyzer(model, opts)
    hub = LiveHub(model, opts, detect_opts or DetectOptions()) if opts.device is not None else None

    @asynccontextmanager
    async def lifespan(app):
        if hub is not None and start_live:
            hub.start()
        try:
            yield
        finally:
            if hub is not None:
                hub.close()
            analyzer.close()

    app = FastAPI(title="birdsound", version=model.meta.model_version, docs_url=None, redoc_url=None,
                  lifespan=lifespan, description="Bird species recognition: analyse uploaded audio, watch a "
                                                 "live microphone. Errors are JSON {error, status}.")
    app.state.analyzer, app.state.hub = analyzer, hub

    def error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
        return JSONResponse({"error": message, "status": status}, status_code=status, headers=headers)

    @app.exception_handler(ServeError)
    async def _serve_error(request, e: ServeError):
        return error(e.status, e.message, e.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, e):
        msgs = [f"{'.'.join(str(x) for x in err['loc'][1:]) or err['loc'][0]}: {err['msg']}" for err in e.errors()]
        return error(422, "; ".join(msgs))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request, e):
        return error(e.status_code, str(e.detail))

    @app.exception_handler(Exception)
    async def _crash(request, e):  # never a traceback to the client
        import logging

        logging.getLogger("birdsound.serve").exception("request failed")
        return error(500, f"internal error ({type(e).__name__})")

    @app.middleware("http")
    async def auth(request: Request, call_next):
        if opts.token:
            got = request.headers.get("authorization", "")
            token = got[7:] if got.lower().startswith("bearer ") else request.query_params.get("token", "")
            if not hmac.compare_digest(token.encode(), opts.token.encode()):
                return error(401, "missing or wrong token: send 'Authorization: Bearer TOKEN'",
                             {"WWW-Authenticate": "Bearer"})
        return await call_next(request)

    @app.get("/healthz", summary="Liveness: ok, the model version and the live pipeline's state")
    async def healthz():
        return {"status": "ok", "model_version": model.meta.model_version,
                "live": hub.status if hub is not None else None, "inflight": analyzer.inflight}

    @app.get("/v1/model", summary="The model's metadata and species")
    async def model_info():
        return model.meta.to_dict()

    @app.post("/v1/analyze", summary="Analyse an audio file (the body, or multipart field 'file')",
              description="Query parameters are analyze's options: min_conf, overlap, sensitivity, top_n, include, "
                          "exclude (species names, repeated or comma-separated), merge, fmin, fmax, channel "
                          "(1-based), filename (the name written in the answer). The answer is the JSON of "
                          "'birdsound analyze --rtype json'. 400 empty body, 413 too large or too long, 415 not "
                          "audio, 422 bad parameters or undecodable audio, 503 busy (Retry-After).",
              responses={400: {}, 401: {}, 413: {}, 415: {}, 422: {}, 503: {}})
    async def analyze(request: Request):
        q: dict[str, list[str]] = {}
        for k, v in request.query_params.multi_items():
            q.setdefault(k, []).append(v)
        aopts, filename = analyzer.options(q)
        limit = int(opts.max_mb * 1e6)
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit + 64 * 1024:
            raise ServeError(413, f"upload of {int(declared) / 1e6:.1f} MB; this server takes at most {opts.max_mb:g} MB")
        analyzer.admit()
        fd, path = tempfile.mkstemp(dir=analyzer.tmp, suffix=".upload")
        os.close(fd)
        try:
            name = await receive_upload(request, path, limit, filename)
            loop = asyncio.get_running_loop()
            text, warnings = await loop.run_in_executor(analyzer.pool, analyzer.analyze_file, path, name, aopts)
            headers = {"X-Birdsound-Warning": warnings[0][:500]} if warnings else None
            return Response(text, media_type="application/json", headers=headers)
        finally:
            analyzer.release()
            if os.path.exists(path):
                os.remove(path)

    async def receive_upload(request: Request, path: str, limit: int, filename: str | None) -> str:
        ctype = request.headers.get("content-type", "")
        size = 0
        if ctype.startswith("multipart/form-data"):
            form = await request.form(max_files=1, max_fields=20, max_part_size=limit + 1)
            try:
                up = form.get("file")
                if up is None or isinstance(up, str):
                    raise ServeError(400, "multipart upload without a 'file' field")
                with open(path, "wb") as out:
                    while chunk := await up.read(1 << 20):
                        size += len(chunk)
                        if size > limit:
                            raise ServeError(413, f"upload larger than {opts.max_mb:g} MB")
                        out.write(chunk)
                filename = filename or os.path.basename(up.filename or "") or None
            finally:
                await form.close()
        else:
            with open(path, "wb") as out:
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > limit:
                        raise ServeError(413, f"upload larger than {opts.max_mb:g} MB")
                    out.write(chunk)
        if size == 0:
            raise ServeError(400, "empty body: send the audio file as the request body (or multipart field 'file')")
        return filename or "upload"

    @app.get("/v1/detections", summary="Detections from the SQLite log (today, or all with day=all), newest first")
    async def detections(day: str = "today", limit: int = 200):
        if day not in ("today", "all"):
            raise ServeError(422, "day: 'today' or 'all'")
        items = read_history(opts.log_path, dt.date.today() if day == "today" else None, max(1, min(limit, 5000)))
        if not opts.log_path and hub is not None:
            items = list(reversed(hub.recent))[:limit]
        return {"detections": items, "tally": tally(items)}

    @app.get("/v1/clips/{name}", summary="A detection's WAV clip, by file name")
    async def clip(name: str):
        if not opts.clips_dir or not CLIP_NAME.match(name):
            raise ServeError(404, "no such clip")
        p = os.path.join(opts.clips_dir, name)
        # a clip is written once its post-roll has been recorded: a request that comes sooner waits for it
        wait = min(hub.clip_pending(name), 10.0) if hub is not None else 0.0
        deadline = time.monotonic() + wait
        while not os.path.isfile(p) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if not os.path.isfile(p):
            raise ServeError(404, "no such clip")
        return FileResponse(p, media_type="audio/wav")

    @app.get("/v1/live/events", summary="Server-Sent Events: status, spectrogram columns, detections")
    async def events(request: Request):
        if hub is None:
            raise ServeError(404, "no live microphone: start the server with --device")
        loop = asyncio.get_running_loop()
        q = hub.subscribe(loop)

        async def stream():
            try:
                yield f"event: status\ndata: {json.dumps(hub.status)}\n\n"
                while True:
                    try:
                        msg = await asyncio.wait_for(q.get(), timeout=15)
                    except asyncio.TimeoutError:
                        yield ": keep-alive\n\n"
                        continue
                    if msg is None or await request.is_disconnected():
                        break
                    yield msg
            finally:
                hub.unsubscribe(loop, q)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index():
        return HTMLResponse(web_file("index.html"))

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: str):
        if name not in ("app.js", "style.css"):
            raise ServeError(404, "not found")
        media = "text/javascript" if name.endswith(".js") else "text/css"
        return Response(web_file(name), media_type=media, headers={"Cache-Control": "no-cache"})

    @app.get("/docs", response_class=HTMLResponse, include_in_schema=False)
    async def docs():
        return HTMLResponse(docs_page(app.openapi()))

    return app


def web_file(name: str) -> str:
    """A file of the dashboard, shipped in the package (no CDN)."""
    return (files("birdsound") / "web" / name).read_text(encoding="utf-8")


def docs_page(spec: dict) -> str:
    """The OpenAPI description as a plain HTML page (works offline)."""
    import html

    rows = []
    for path, ops in spec.get("paths", {}).items():
        for method, op in ops.items():
            rows.append(f"<h3><code>{method.upper()} {html.escape(path)}</code></h3><p><b>{html.escape(op.get('summary', ''))}"
                        f"</b></p><p>{html.escape(op.get('description', ''))}</p>")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>birdsound API</title>"
            f"<link rel='stylesheet' href='/static/style.css'></head><body class='docs'><h1>birdsound API "
            f"{html.escape(spec['info']['version'])}</h1><p>{html.escape(spec['info'].get('description', ''))}</p>"
            f"<p>Machine-readable: <a href='/openapi.json'>/openapi.json</a>. Example: <code>curl -s --data-binary "
            f"@recording.wav 'http://127.0.0.1:8000/v1/analyze?min_conf=0.3'</code></p>{''.join(rows)}</body></html>")


def serve(model: Classifier, opts: ServeOptions, detect_opts: DetectOptions | None = None) -> None:
    """Run the server until Ctrl-C / SIGTERM (uvicorn handles the signals)."""
    import uvicorn

    check_bind(opts)
    app = create_app(model, opts, detect_opts)
    uvicorn.run(app, host=opts.host, port=opts.port, log_level="warning", access_log=False)
