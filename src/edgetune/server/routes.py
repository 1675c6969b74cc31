"""The HTTP endpoints (JSON in and out; errors are ``{"error": message, "code": code}``).

    GET    /                      the page (static files under /static/)
    GET    /api/health            {"ok": true}
    GET    /api/state             classes with sample counts, training state, loss curve
    POST   /api/classes           {"name": N}                     add a class
    PATCH  /api/classes?name=OLD  {"name": NEW}                   rename a class
    DELETE /api/classes?name=N                                    remove a class and its samples
    POST   /api/samples           multipart: label=N, files...    add files to a class (images;
                                                                   WAV/FLAC/OGG clips for audio):
                                   {"added", "files": [{"file", "id"} or {"file", "error"}],
                                   "state"}; 400 with "files" when none could be added
    DELETE /api/samples/last?label=N                              undo the class's last sample
    GET    /api/samples[?label=N]                                 samples: id, label, time, source
    GET    /api/samples/ID/thumbnail.jpg                          what the model saw, small (JPEG)
    DELETE /api/samples/ID                                        remove one sample
    POST   /api/predict           multipart: image=FILE (or a raw image/* or audio/* body)
    POST   /api/train             {"epochs": 30, "early_stop": true, "batch_size": 32,
                                   "lr": 0.01}  train in the background (all optional)
    POST   /api/train/stop
    GET    /api/model.onnx        the personalized model (standalone ONNX, classes in metadata)
    GET    /bundle/..., /static/ort/...   the bundle read-only and onnxruntime-web, for the
                                   page in the tab (server/tab_files.py)

``epochs`` defaults to :data:`edgetune.defaults.EPOCHS` (an upper bound: training stops
early on a plateau unless ``early_stop`` is false).
"""

from __future__ import annotations

from pathlib import Path

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from edgetune import hyperparams
from edgetune.errors import BadInputError
from edgetune.server.api import ApiError, json_body, label
from edgetune.server.intake import add_inputs
from edgetune.server.limits import MAX_BATCH_SIZE, MAX_EPOCHS, Limits
from edgetune.server.session import Studio
from edgetune.server.tab_files import tab_routes

__all__ = ["STATIC_DIR", "UPLOAD_PATHS", "http_routes"]

STATIC_DIR = Path(__file__).parent / "static"
UPLOAD_PATHS = ("/api/samples", "/api/predict")  # bodies up to Limits.upload_bytes


def _studio(request: Request) -> Studio:
    return request.app.state.studio


async def _files(request: Request, limits: Limits) -> tuple[dict, list[tuple[str, bytes]]]:
    """Fields and files of a multipart form (each file at most the upload limit)."""
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith(("multipart/form-data",
                                    "application/x-www-form-urlencoded")):
        raise ApiError(415, "send the files as multipart/form-data", "bad_content_type")
    async with request.form(max_files=limits.files_per_upload, max_fields=20,
                            max_part_size=4096) as form:
        fields, files = {}, []
        for key, value in form.multi_items():
            if isinstance(value, str):
                fields[key] = value
            else:
                files.append((value.filename or key, await value.read()))
    return fields, files


async def index(request: Request) -> Response:
    return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-store"})


async def get_state(request: Request) -> Response:
    return JSONResponse(await run_in_threadpool(_studio(request).state))


async def health(request: Request) -> Response:
    return JSONResponse({"ok": True})


async def add_class(request: Request) -> Response:
    studio = _studio(request)
    name = label((await json_body(request)).get("name"))
    await run_in_threadpool(studio.p.add_class, name)
    studio.broadcast_state()
    return JSONResponse(await run_in_threadpool(studio.state), status_code=201)


async def change_class(request: Request) -> Response:
    studio = _studio(request)
    name = label(request.query_params.get("name"), "the name query parameter")
    if request.method == "DELETE":
        await run_in_threadpool(studio.p.remove_class, name)
    else:
        new = label((await json_body(request)).get("name"), "the new name")
        await run_in_threadpool(studio.rename_class, name, new)
    studio.broadcast_state()
    return JSONResponse(await run_in_threadpool(studio.state))


async def add_samples(request: Request) -> Response:
    studio, limits = _studio(request), request.app.state.limits
    fields, files = await _files(request, limits)
    name = label(fields.get("label"), "the label field")
    if not files:
        raise ApiError(400, "no files in the upload", "no_files")
    if name not in await run_in_threadpool(studio.p.counts):
        raise ApiError(404, f"unknown class {name!r}; add it first", "unknown_class")
    result = await studio.run_model(add_inputs, studio.p, files, name, "upload")
    if not result.ids:
        return JSONResponse(
            {"error": "nothing was added: " + "; ".join(f["error"] for f in result.failed),
             "code": "bad_input", "files": result.files}, status_code=400)
    studio.broadcast_state()
    return JSONResponse({"added": len(result.ids), "files": result.files,
                         "state": await run_in_threadpool(studio.state)})


async def list_samples(request: Request) -> Response:
    """[{"id", "label", "created_at", "source", "thumbnail_url"}], oldest first
    (``?label=N``: one class)."""
    studio = _studio(request)
    wanted = request.query_params.get("label")
    if wanted is not None:
        wanted = label(wanted, "the label query parameter")
    samples = await run_in_threadpool(studio.p.samples)
    return JSONResponse({"samples": [
        {"id": s.id, "label": s.label, "created_at": s.created_at, "source": s.source,
         "thumbnail_url": f"/api/samples/{s.id}/thumbnail.jpg"}
        for s in samples if wanted is None or s.label == wanted]})


async def sample_thumbnail(request: Request) -> Response:
    studio = _studio(request)
    sample_id = request.path_params["sample_id"]
    data = await run_in_threadpool(studio.p.store.thumbnail, sample_id)
    if data is None:
        raise ApiError(404, f"sample {sample_id} has no thumbnail (added before thumbnails "
                       f"were kept, or not an image)", "no_thumbnail")
    return Response(data, media_type="image/jpeg",
                    headers={"Cache-Control": "private, max-age=3600"})


async def undo_sample(request: Request) -> Response:
    studio = _studio(request)
    name = label(request.query_params.get("label"), "the label query parameter")

    def undo():
        ids = [s.id for s in studio.p.samples() if s.label == name]
        if not ids:
            raise ApiError(404, f"class {name!r} has no samples", "no_samples")
        studio.p.remove_sample(ids[-1])
        return ids[-1]

    removed = await run_in_threadpool(undo)
    studio.broadcast_state()
    return JSONResponse({"removed": removed, "state": await run_in_threadpool(studio.state)})


async def remove_sample(request: Request) -> Response:
    studio = _studio(request)
    await run_in_threadpool(studio.p.remove_sample, request.path_params["sample_id"])
    studio.broadcast_state()
    return JSONResponse(await run_in_threadpool(studio.state))


async def predict(request: Request) -> Response:
    studio, limits = _studio(request), request.app.state.limits
    if request.headers.get("content-type", "").startswith(("image/", "audio/")):
        image = await request.body()
    else:
        _, files = await _files(request, limits)
        if len(files) != 1:
            raise ApiError(400, f"send exactly one file (got {len(files)})", "no_files")
        image = files[0][1]
    if not image:
        raise ApiError(400, "the upload is empty", "bad_image")
    return JSONResponse(await studio.run_model(studio.predict, image))


def training_settings(body: dict, default_epochs: int) -> dict:
    """The settings of POST /api/train, checked as every entry point checks them
    (edgetune.hyperparams): 400 ``bad_epochs`` or ``bad_settings`` naming the value."""
    unknown = sorted(set(body) - {"epochs", "batch_size", "lr", "early_stop"})
    if unknown:
        raise ApiError(400, f"unknown setting {unknown[0]!r} (expected epochs, batch_size, "
                       f"lr, early_stop)", "bad_settings")
    epochs = body.get("epochs", default_epochs)
    try:
        epochs = hyperparams.check_epochs(epochs)
    except BadInputError as e:
        raise ApiError(400, str(e), "bad_epochs") from None
    if isinstance(body.get("epochs"), float) or epochs > MAX_EPOCHS:
        raise ApiError(400, f"epochs is {body.get('epochs')!r}; it must be a whole number "
                       f"from 1 to {MAX_EPOCHS}", "bad_epochs")
    settings = {"epochs": epochs, "early_stop": body.get("early_stop", True)}
    if not isinstance(settings["early_stop"], bool):
        raise ApiError(400, "early_stop must be true or false", "bad_json")
    try:
        for key, check in (("batch_size", hyperparams.check_batch_size),
                           ("lr", hyperparams.check_lr)):
            if body.get(key) is not None:
                if key == "batch_size" and isinstance(body[key], float):
                    raise BadInputError(f"batch size must be a whole number, got {body[key]!r}")
                settings[key] = check(body[key])
    except BadInputError as e:
        raise ApiError(400, str(e), "bad_settings") from None
    if settings.get("batch_size", 0) > MAX_BATCH_SIZE:
        raise ApiError(400, f"batch size is {settings['batch_size']}; it must be between 1 "
                       f"and {MAX_BATCH_SIZE}", "bad_settings")
    return settings


async def train(request: Request) -> Response:
    studio = _studio(request)
    settings = training_settings(await json_body(request, optional=True),
                                 studio.default_epochs)
    studio.start_training(**settings)
    return JSONResponse(await run_in_threadpool(studio.state), status_code=202)


async def stop_training(request: Request) -> Response:
    studio = _studio(request)
    await run_in_threadpool(studio.stop_training)
    return JSONResponse(await run_in_threadpool(studio.state))


async def download_model(request: Request) -> Response:
    data = await run_in_threadpool(_studio(request).export)
    return Response(data, media_type="application/octet-stream",
                    headers={"Content-Disposition": 'attachment; filename="edgetune-personal.onnx"',
                             "Cache-Control": "no-store"})


def http_routes() -> list:
    """The page, the API and the static files."""
    return [
        Route("/", index, methods=["GET", "HEAD"]),
        Route("/api/health", health, methods=["GET"]),
        Route("/api/state", get_state, methods=["GET"]),
        Route("/api/classes", add_class, methods=["POST"]),
        Route("/api/classes", change_class, methods=["PATCH", "DELETE"]),
        Route("/api/samples", add_samples, methods=["POST"]),
        Route("/api/samples/last", undo_sample, methods=["DELETE"]),
        Route("/api/samples", list_samples, methods=["GET"]),
        Route("/api/samples/{sample_id:int}", remove_sample, methods=["DELETE"]),
        Route("/api/samples/{sample_id:int}/thumbnail.jpg", sample_thumbnail, methods=["GET"]),
        Route("/api/predict", predict, methods=["POST"]),
        Route("/api/train", train, methods=["POST"]),
        Route("/api/train/stop", stop_training, methods=["POST"]),
        Route("/api/model.onnx", download_model, methods=["GET"]),
        *tab_routes(),  # the bundle read-only and onnxruntime-web, for the tab
        Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
    ]
