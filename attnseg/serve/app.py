"""``attnseg serve``: a web page and a JSON API over trained models, on the one inference path of ``attnseg.load``.

    GET  /                the page (static/index.html, static/app.js, static/style.css: no CDN, no build step)
    GET  /healthz         {"status": "ok", "models": N, "busy": [names of models running now]}
    GET  /api/models      {"models": [{"name", "model", "classes", "palette", "num_params", "metrics", ...}],
                           "limits": {"max_upload_bytes", "max_pixels"}}
    POST /api/predict     multipart: image (file), model (name; optional with one model), query ("Y,X" image pixel,
                          optional), attention (default true), raw_ids (default false)
                          -> {"model", "width", "height", "classes", "palette", "ids_png" (base64 palette PNG:
                              pixel = class id), "ids_raw" (base64 uint8 H*W, with raw_ids), "stats" (per class:
                              id, name, color, pixels, share, confidence), "timing_ms", "inference", "token",
                              "attention": {"needs_query", "pictures": [{"name", "title", "query", "png"}], "notes"},
                              "notes", "kind": "semantic"}
    POST /api/attention   JSON {"token", "y", "x"}: the pictures of one query pixel of an earlier prediction
                          (kept for the last ``cache_size`` predictions), without a second upload

A model's response names its kind (``semantic``: class ids; instance models answer ``instance`` with
"instances" [{"id", "label", "class", "score", "box", "area", "mask" (COCO RLE)}], "count", a 16-bit ``ids_png``,
uint16 ``ids_raw`` and one palette colour and stats row per instance) and its own named attention pictures, so
every model family plugs into the same page.

Bad requests get a 4xx and ``{"error": "<plain sentence>"}``: an empty, truncated or non-image upload, an upload
over ``max_upload_bytes`` (checked while the body arrives, before it is parsed) or over ``max_pixels`` (checked
from the header, before decoding), an unknown model, a query outside the image, a file name with path parts.
Uploads are held in memory only (nothing a client sends reaches the file system). Each model runs one call at a
time (its predictor's lock), in a worker thread, so ``/healthz`` keeps answering while a model runs.
"""

# no `from __future__ import annotations`: FastAPI reads the endpoint annotations (Request) at definition time

import base64
import io
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

STATIC = Path(__file__).with_name("static")


@dataclass
class ServeSettings:
    max_upload_bytes: int = 20 * 1024 * 1024   # whole request body
    max_pixels: int = 16_000_000               # width x height of one upload (4000 x 4000)
    cache_size: int = 8                        # predictions kept for /api/attention clicks


class RequestError(Exception):
    """A bad request: HTTP ``status`` and a plain message."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def png_base64(image: np.ndarray, compress_level: int = 1) -> str:
    """(H, W, 3) uint8 -> base64 PNG (fast compression: the page is on the same machine or network)."""
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", compress_level=compress_level)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def ids_png_base64(ids: np.ndarray, spec) -> str:
    """(H, W) class ids -> base64 palette PNG (pixel index = class id), as ``attnseg predict`` writes."""
    from PIL import Image
    palette = np.zeros((256, 3), np.uint8)
    palette[: spec.num_classes] = np.asarray(spec.palette, np.uint8)[:256]
    im = Image.fromarray(np.ascontiguousarray(ids, dtype=np.uint8), mode="P")
    im.putpalette(palette.ravel().tolist())
    buf = io.BytesIO()
    im.save(buf, format="PNG", compress_level=1)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def check_file_name(name: str | None) -> None:
    """A client's file name is only shown back, never used as a path: refuse one with path parts."""
    if name and ("/" in name or "\\" in name or "\x00" in name or name in (".", "..")):
        raise RequestError(400, f"file name {name!r} has path parts; send the bare file name (it is only shown "
                                "back, never used as a path)")


def decode_upload(data: bytes, name: str | None, settings: ServeSettings) -> np.ndarray:
    """Upload bytes -> (H, W, 3) uint8; RequestError for anything that is not a whole image within the limits."""
    from PIL import Image, UnidentifiedImageError
    check_file_name(name)
    what = f"upload {name!r}" if name else "the upload"
    if not data:
        raise RequestError(400, f"{what} is empty (0 bytes); choose an image file")
    try:
        im = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        raise RequestError(413, f"{what} declares more pixels than Pillow will decode; send a smaller image") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise RequestError(415, f"{what} is not an image this server can read (PNG, JPEG, WebP, BMP, TIFF, "
                                "GIF)") from None
    w, h = im.size
    if w * h > settings.max_pixels:
        raise RequestError(413, f"{what} is {w}x{h} = {w * h:,} pixels, over this server's limit of "
                                f"{settings.max_pixels:,} (attnseg serve --max-pixels); send a smaller image")
    if w < 1 or h < 1:
        raise RequestError(400, f"{what} is {w}x{h}: it has no pixels")
    try:
        im.load()
        from PIL import ImageOps
        im = ImageOps.exif_transpose(im)  # a phone photo the right way up, as the browser draws it
        return np.asarray(im.convert("RGB"))
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        reason = "truncated" if "truncated" in str(e).lower() or isinstance(e, EOFError) else "corrupt"
        raise RequestError(400, f"{what} is {reason} ({str(e).splitlines()[0][:120]}); send the whole "
                                "file") from None


def parse_query(text: str | None) -> tuple[int, int] | None:
    if text is None or str(text).strip() == "":
        return None
    parts = str(text).replace(" ", "").split(",")
    try:
        if len(parts) != 2:
            raise ValueError
        return int(parts[0]), int(parts[1])
    except ValueError:
        raise RequestError(400, f"query takes Y,X: the pixel's row and column, two integers such as 120,200; "
                                f"not {text!r}") from None


def parse_flag(text, default: bool, name: str) -> bool:
    if text is None or str(text) == "":
        return default
    v = str(text).strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise RequestError(400, f"{name} takes true or false, not {text!r}")


class _BodyTooLarge(Exception):
    pass


class BodyLimit:
    """ASGI middleware: refuse a request body over ``limit`` bytes with 413, from Content-Length at once or while
    the body streams in (a chunked upload without a length), before anything parses it."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def _refuse(self, send, length: str):
        import json
        body = json.dumps({"error": f"the request body is {length}, over this server's limit of {self.limit:,} "
                                    "bytes (attnseg serve --max-upload-mb); send a smaller image"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            return await self._refuse(send, f"{int(length):,} bytes")
        seen = 0
        started = False

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _BodyTooLarge
            return message

        async def tracking_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyTooLarge:
            if not started:
                await self._refuse(send, "more than that")


class ModelHub:
    """The served predictors by name, the predictions kept for clicks, and which models are running."""

    def __init__(self, predictors: dict, settings: ServeSettings):
        if not predictors:
            raise ValueError("attnseg serve needs at least one run directory or checkpoint")
        self.predictors, self.settings = predictors, settings
        self.cache: OrderedDict[str, tuple[str, object]] = OrderedDict()
        self.busy: dict[str, int] = {}
        self._lock = threading.Lock()

    def get(self, name: str | None):
        if not name:
            if len(self.predictors) == 1:
                return next(iter(self.predictors.items()))
            raise RequestError(400, f"this server holds {len(self.predictors)} models; name one in the field 'model' "
                                    f"({', '.join(self.predictors)})")
        if name not in self.predictors:
            raise RequestError(404, f"unknown model {name!r}; this server holds {', '.join(self.predictors)}")
        return name, self.predictors[name]

    def keep(self, name: str, result) -> str:
        token = secrets.token_urlsafe(12)
        with self._lock:
            self.cache[token] = (name, result)
            while len(self.cache) > self.settings.cache_size:
                self.cache.popitem(last=False)
        return token

    def kept(self, token: str):
        with self._lock:
            if token not in self.cache:
                raise RequestError(404, "this prediction is no longer kept (the server keeps the last "
                                        f"{self.settings.cache_size}); upload the image again")
            self.cache.move_to_end(token)
            return self.cache[token]

    def running(self, name: str, delta: int):
        with self._lock:
            self.busy[name] = self.busy.get(name, 0) + delta
            if self.busy[name] <= 0:
                del self.busy[name]


def pictures_json(pictures) -> list[dict]:
    return [{"name": p.name, "title": p.title, "query": list(p.query) if p.query else None,
             "png": png_base64(p.image),
             **({"gif": base64.b64encode(p.animation).decode("ascii")} if p.animation is not None else {})}
            for p in pictures]


def predict_response(hub: ModelHub, name: str, predictor, image: np.ndarray, query, attention: bool,
                     raw_ids: bool) -> dict:
    """Run one prediction and build the JSON answer (in a worker thread)."""
    t0 = time.perf_counter()
    want_attention = attention and predictor.backend == "torch"
    hub.running(name, +1)
    try:
        result = predictor.predict(image, attention=want_attention, query=query)
    except ValueError as e:  # a query outside the image, a memory plan that cannot fit
        raise RequestError(413 if "over the limit" in str(e) else 400, str(e)) from None
    finally:
        hub.running(name, -1)
    if getattr(result, "kind", "semantic") == "classification":
        out = classification_response(result, name)
        out["token"] = hub.keep(name, result)
    elif getattr(result, "kind", "semantic") == "instance":
        out = instance_response(result, name, raw_ids)
        out["token"] = hub.keep(name, result)
    else:
        out = semantic_response(result, name, raw_ids)
        out["token"] = hub.keep(name, result)
    if result.attention is not None:
        pictures, notes = result.attention.pictures(query)
        out["attention"] = {"needs_query": result.attention.needs_query, "pictures": pictures_json(pictures),
                            "notes": notes}
    else:
        out["attention"] = {"needs_query": False, "pictures": [], "notes": [
            "attention maps need the PyTorch checkpoint; this model is served from ONNX"
            if predictor.backend != "torch" else "attention was not asked for"]}
    out["timing_ms"] = {**{k: round(v, 2) for k, v in result.timing_ms.items()},
                        "server": round(1000 * (time.perf_counter() - t0), 2)}
    return out


def instance_response(result, name: str, raw_ids: bool) -> dict:
    """An instance model's answer: ``kind: "instance"``, the instances (id, class, score, box, area, RLE mask),
    ``ids_png`` a 16-bit PNG of the id map, ``ids_raw`` (with raw_ids) base64 uint16 little-endian H*W, and per
    instance a colour (``palette[id]``; ``palette[0]`` null: the background is not tinted) and a ``stats`` row, so
    the page's overlay, legend and hover work as for classes."""
    from PIL import Image

    from ..viz.instances import instance_colours
    H, W = result.ids.shape
    if result.ids.max(initial=0) > 65535:
        raise RequestError(422, f"{int(result.ids.max())} instances do not fit the page's 16-bit id map")
    data = result.to_json()
    colours = instance_colours(int(result.ids.max(initial=0))).tolist()
    total = max(H * W, 1)
    stats = [{"id": r["id"], "name": f"{r['class']} {r['id']}", "color": colours[r["id"]], "pixels": r["area"],
              "share": r["area"] / total, "confidence": r["score"]} for r in data["instances"]]
    names = ["background"] + [""] * int(result.ids.max(initial=0))
    for r in stats:
        names[r["id"]] = r["name"]
    buf = io.BytesIO()
    Image.fromarray(result.ids.astype(np.uint16)).save(buf, format="PNG", compress_level=1)
    out = {"kind": "instance", "model": name, "width": W, "height": H, "classes": names,
           "palette": [None] + colours[1:], "ids_png": base64.b64encode(buf.getvalue()).decode("ascii"),
           "count": data["count"], "instances": data["instances"], "instance_classes": data["classes"],
           "stats": stats, "inference": result.inference, "notes": list(result.notes)}
    if raw_ids:
        out["ids_raw"] = base64.b64encode(np.ascontiguousarray(result.ids, dtype="<u2").tobytes()).decode("ascii")
    return out


def classification_response(result, name: str) -> dict:
    """A classifier's answer: ``kind: "classification"``, the class (``label``, ``class``, ``score``), every class's
    probability (``probs``; ``stats`` rows sorted by probability, for the page's table), the top three, and the
    size of the input it was resized to; no per-pixel map."""
    from ..data.labels import default_palette
    H, W = result.image.shape[:2]
    palette = [list(c) for c in default_palette(len(result.class_names))]
    stats = sorted(({"id": k, "name": n, "color": palette[k], "share": float(p), "confidence": float(p)}
                    for k, (n, p) in enumerate(zip(result.class_names, result.probs))), key=lambda r: -r["share"])
    data = result.to_json()
    return {"kind": "classification", "model": name, "width": W, "height": H, "classes": list(result.class_names),
            "palette": palette, "label": data["label"], "class": data["class"], "score": data["score"],
            "probs": data["probs"], "top": data["top"], "stats": stats, "input_size": data["input_size"],
            "inference": f"resized to {data['input_size'][1]}x{data['input_size'][0]}, grey",
            "notes": list(result.notes)}


def semantic_response(result, name: str, raw_ids: bool) -> dict:
    H, W = result.ids.shape
    out = {"kind": "semantic", "model": name, "width": W, "height": H, "classes": result.classes,
           "palette": [list(c) for c in result.palette], "ids_png": ids_png_base64(result.ids, result.spec),
           "stats": result.class_stats(), "inference": result.inference, "notes": list(result.notes)}
    if raw_ids:
        out["ids_raw"] = base64.b64encode(np.ascontiguousarray(result.ids, dtype=np.uint8).tobytes()).decode("ascii")
    return out


def create_app(predictors: dict, settings: ServeSettings | None = None):
    """The FastAPI app over ``predictors`` (name -> ``attnseg.api.Predictor``)."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import FileResponse, JSONResponse
    from fastapi.staticfiles import StaticFiles
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException as StarletteHTTPException
    from starlette.formparsers import MultiPartParser

    settings = settings or ServeSettings()
    hub = ModelHub(predictors, settings)
    # file parts stay in memory up to the upload limit (the body limit comes first): nothing reaches a temp file
    MultiPartParser.spool_max_size = max(MultiPartParser.spool_max_size, settings.max_upload_bytes + 1)
    app = FastAPI(title="attnseg", docs_url="/api/docs", redoc_url=None)
    app.state.hub = hub
    app.add_middleware(BodyLimit, limit=settings.max_upload_bytes)

    @app.exception_handler(RequestError)
    async def _request_error(request, exc: RequestError):
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request, exc: RequestValidationError):
        parts = [f"{'.'.join(str(v) for v in e.get('loc', ())[1:]) or 'body'}: {e.get('msg')}" for e in exc.errors()]
        return JSONResponse({"error": "bad request: " + "; ".join(parts)}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, exc):
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code)

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok", "models": len(hub.predictors), "busy": sorted(hub.busy)}

    @app.get("/api/models")
    async def models():
        return {"models": [{"name": n, **p.describe()} for n, p in hub.predictors.items()],
                "limits": {"max_upload_bytes": settings.max_upload_bytes, "max_pixels": settings.max_pixels}}

    @app.post("/api/predict")
    async def predict(request: Request):
        content_type = request.headers.get("content-type", "")
        if not content_type.startswith("multipart/form-data"):
            raise RequestError(415, "POST /api/predict takes multipart/form-data with the image in the field 'image' "
                                    f"(got content type {content_type or 'none'!r})")
        try:
            form = await request.form(max_files=1, max_fields=16, max_part_size=1024)
        except _BodyTooLarge:
            raise  # answered 413 by BodyLimit
        except Exception as e:  # malformed multipart, too many parts: the parser's own sentence
            raise RequestError(400, f"the multipart body could not be read: {e}") from None
        upload = form.get("image")
        if upload is None or isinstance(upload, str):
            raise RequestError(400, "the request has no file in the field 'image'; send the image as multipart "
                                    "form-data field 'image'")
        name, predictor = hub.get(form.get("model"))
        query = parse_query(form.get("query"))
        attention = parse_flag(form.get("attention"), True, "attention")
        raw_ids = parse_flag(form.get("raw_ids"), False, "raw_ids")
        data = await upload.read()

        def work():  # one hop to a worker thread: decode, predict, encode
            image = decode_upload(data, upload.filename, settings)
            return predict_response(hub, name, predictor, image, query, attention, raw_ids)

        return JSONResponse(await run_in_threadpool(work))

    @app.post("/api/attention")
    async def attention(request: Request):
        try:
            body = await request.json()
            token, y, x = str(body["token"]), int(body["y"]), int(body["x"])
        except (ValueError, KeyError, TypeError):
            raise RequestError(400, 'POST /api/attention takes JSON {"token": ..., "y": row, "x": column}') from None
        name, result = hub.kept(token)
        if getattr(result, "kind", "") == "classification":
            raise RequestError(400, f"model {name} is a classifier: its glimpses do not depend on a pixel and came "
                                    "with the prediction")
        if result.attention is None:
            raise RequestError(400, f"model {name} returned no attention maps for this prediction")

        def draw():
            from ..viz.attention_maps import check_query
            try:
                check_query((y, x), result.ids.shape)
            except ValueError as e:
                raise RequestError(400, str(e)) from None
            pictures, notes = result.attention.pictures((y, x), query_only=True)
            return {"model": name, "query": [y, x], "pictures": pictures_json(pictures), "notes": notes}

        return JSONResponse(await run_in_threadpool(draw))

    @app.get("/")
    async def index():
        return FileResponse(STATIC / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def unique_names(sources: list[str]) -> list[str]:
    """A short distinct name per served run: the run's folder name (for ``RUN/checkpoints/x.safetensors`` and
    ``RUN/export/x.onnx`` too; ``-onnx`` added for an ONNX file), numbered where two agree."""
    out, taken = [], set()
    for source in sources:
        p = Path(source).resolve()
        run = p if p.is_dir() else (p.parent.parent if p.parent.name in ("checkpoints", "export") else p.parent)
        name = run.name + ("-onnx" if p.suffix.lower() == ".onnx" else "")
        if p.is_file() and p.parent.name not in ("checkpoints", "export"):
            name = f"{run.name}-{p.stem}"
        candidate, k = name, 1
        while candidate in taken:
            k += 1
            candidate = f"{name}-{k}"
        taken.add(candidate)
        out.append(candidate)
    return out
