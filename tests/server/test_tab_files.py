"""The files the tab personalizes with (server/tab_files.py): the profile's bundle,
read-only, exactly the files its manifest names; onnxruntime-web's files from the npm
install; the headers that let the page compile wasm and use threads."""

from __future__ import annotations

import hashlib
import json

import pytest
from conftest import tiny_base

pytest.importorskip("starlette")

from starlette.testclient import TestClient  # noqa: E402

from edgetune.converter.convert import convert  # noqa: E402
from edgetune.converter.heads import SoftmaxClassifier  # noqa: E402
from edgetune.converter.optimizers import Adam  # noqa: E402
from edgetune.runtime.personalizer import Personalizer  # noqa: E402
from edgetune.server.app import create_app  # noqa: E402
from edgetune.server.tab_files import ORT_DIR, ORT_FILES  # noqa: E402


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    root = tmp_path_factory.mktemp("tabfiles")
    bundle = convert(tiny_base(root / "tiny.onnx"), SoftmaxClassifier(3), Adam(lr=0.01))
    bundle.save(root / "t.edgetune")
    p = Personalizer(root / "t.edgetune", profile=root / "profile")
    try:
        with TestClient(create_app(p), base_url="http://127.0.0.1:8321") as c:
            yield c
    finally:
        p.close()


def test_the_bundle_is_served_as_its_manifest_names_it(client):
    r = client.get("/bundle/manifest.json")
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    manifest = r.json()
    entries = [*manifest["graphs"].values(), manifest["init"]]
    for entry in entries:
        body = client.get(f"/bundle/{entry['file']}")
        assert body.status_code == 200, entry["file"]
        assert hashlib.sha256(body.content).hexdigest() == entry["sha256"]
    assert json.loads(client.get("/bundle/manifest.json").content) == manifest


@pytest.mark.parametrize("path", [
    "/bundle/lock", "/bundle/samples.sqlite", "/bundle/..%2Fsamples.sqlite",
    "/bundle/%2e%2e/lock", "/bundle/.manifest.json", "/bundle/", "/static/ort/package.json",
    "/static/ort/..%2F..%2Fpackage.json", "/static/ort/ort.all.min.mjs"])
def test_nothing_else_is_reachable(client, path):
    r = client.get(path)
    assert r.status_code == 404, (path, r.status_code, r.content[:200])


def test_the_bundle_is_read_only(client):
    assert client.put("/bundle/manifest.json", content=b"{}").status_code == 405
    assert client.delete("/bundle/base.onnx").status_code == 405


def test_onnxruntime_web_is_served_locally_with_the_right_types(client):
    assert ORT_DIR.is_dir(), "npm ci --prefix src/edgetune/server/web (make test does)"
    for name, media in ORT_FILES.items():
        r = client.get(f"/static/ort/{name}")
        assert r.status_code == 200, name
        assert r.headers["content-type"].split(";")[0] == media
        assert r.content == (ORT_DIR / name).read_bytes()


def test_the_page_is_cross_origin_isolated_and_may_compile_wasm(client):
    headers = client.get("/").headers
    assert headers["cross-origin-opener-policy"] == "same-origin"
    assert headers["cross-origin-embedder-policy"] == "require-corp"
    script_src = next(d for d in headers["content-security-policy"].split(";")
                      if d.strip().startswith("script-src"))
    assert "'wasm-unsafe-eval'" in script_src and "'unsafe-eval'" not in script_src


def test_without_onnxruntime_web_the_route_says_how_to_install_it(client, monkeypatch, tmp_path):
    """No npm when it was installed: 404 naming the fix (the page then keeps the server
    mode and shows why: tab.js chooseBackend)."""
    from edgetune.server import tab_files

    monkeypatch.setattr(tab_files, "ORT_DIR", tmp_path / "missing")
    r = client.get("/static/ort/ort.wasm.min.mjs")
    assert r.status_code == 404 and r.json()["code"] == "ort_missing"
    assert "npm" in r.json()["error"]
