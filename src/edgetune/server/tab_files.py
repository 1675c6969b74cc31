"""The files a tab needs to personalize by itself (static/edgetune.js): the profile's
bundle, read-only, and onnxruntime-web's own files. Nothing else is reachable here.

    GET /bundle/manifest.json     the manifest of the profile's bundle
    GET /bundle/NAME              a file the manifest names (graphs, init, files); any
                                  other name is 404, so no path reaches outside the bundle
    GET /static/ort/NAME          onnxruntime-web's ESM and wasm files, installed from
                                  the npm registry into server/web/node_modules by the
                                  Makefile (`npm ci`); 404 with the fix when missing
    GET /static/tokenizers/tokenizers.min.mjs
                                  @huggingface/tokenizers' browser build (text bundles
                                  read their tokenizer.json with it), installed likewise

The page checks ``GET /static/ort/ort.wasm.min.mjs`` before it runs in the tab: without
it (no npm on this machine) it keeps the server mode and says why.
"""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Route

from edgetune.server.api import ApiError

__all__ = ["ORT_DIR", "ORT_FILES", "TOKENIZERS_FILE", "bundle_file_names", "tab_routes"]

ORT_DIR = Path(__file__).parent / "web" / "node_modules" / "onnxruntime-web" / "dist"
# The wasm backend only (no WebGL/WebGPU): the ESM entry, its glue and the binary.
ORT_FILES = {
    "ort.wasm.min.mjs": "text/javascript",
    "ort-wasm-simd-threaded.mjs": "text/javascript",
    "ort-wasm-simd-threaded.wasm": "application/wasm",
}
TOKENIZERS_FILE = (Path(__file__).parent / "web" / "node_modules" / "@huggingface" / "tokenizers"
                   / "dist" / "tokenizers.min.mjs")


def _missing(package: str) -> str:
    return (f"{package} is not installed next to the server (src/edgetune/server/"
            "web/node_modules); run `make run` on a machine with npm, or "
            "`npm ci --ignore-scripts --prefix src/edgetune/server/web`")


ORT_MISSING = _missing("onnxruntime-web")
# Revalidated on every use (the ETag makes that a 304): a profile's bundle is replaced
# only with the profile, and a stale cached graph would fail its sha256 check.
REVALIDATE = {"Cache-Control": "no-cache"}


def bundle_file_names(manifest: dict) -> set[str]:
    """The plain file names a manifest names: its graphs, its init file, its `files`."""
    entries = [*(manifest.get("graphs") or {}).values(), manifest.get("init"),
               *(manifest.get("files") or {}).values()]
    names = {e.get("file") for e in entries if isinstance(e, dict)}
    return {n for n in names if isinstance(n, str) and n and "/" not in n and "\\" not in n
            and not n.startswith(".")}


def _bundle(request: Request):
    return request.app.state.studio.p.bundle


async def bundle_manifest(request: Request) -> Response:
    bundle = _bundle(request)
    if bundle.path is None:
        raise ApiError(404, "this profile's bundle lives in memory only", "not_found")
    return FileResponse(Path(bundle.path) / "manifest.json", media_type="application/json",
                        headers=REVALIDATE)


async def bundle_file(request: Request) -> Response:
    bundle, name = _bundle(request), request.path_params["name"]
    if bundle.path is None or name not in bundle_file_names(bundle.manifest):
        raise ApiError(404, f"the bundle has no file {name[:80]!r}", "not_found")
    return FileResponse(Path(bundle.path) / name, media_type="application/octet-stream",
                        headers=REVALIDATE)


async def ort_file(request: Request) -> Response:
    name = request.path_params["name"]
    if name not in ORT_FILES:
        raise ApiError(404, f"no file {name[:80]!r} under /static/ort/", "not_found")
    path = ORT_DIR / name
    if not path.is_file():
        raise ApiError(404, ORT_MISSING, "ort_missing")
    return FileResponse(path, media_type=ORT_FILES[name], headers=REVALIDATE)


async def tokenizers_file(request: Request) -> Response:
    if not TOKENIZERS_FILE.is_file():
        raise ApiError(404, _missing("@huggingface/tokenizers"),
                       "tokenizers_missing")
    return FileResponse(TOKENIZERS_FILE, media_type="text/javascript", headers=REVALIDATE)


def tab_routes() -> list:
    """Routes for the bundle and onnxruntime-web (before the /static mount)."""
    return [
        Route("/bundle/manifest.json", bundle_manifest, methods=["GET", "HEAD"]),
        Route("/bundle/{name}", bundle_file, methods=["GET", "HEAD"]),
        Route("/static/ort/{name}", ort_file, methods=["GET", "HEAD"]),
        Route("/static/tokenizers/tokenizers.min.mjs", tokenizers_file, methods=["GET", "HEAD"]),
    ]
