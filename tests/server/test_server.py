"""The teachable camera's server: limits, malformed input, persistence, access rules.

Most tests drive the Starlette app in process (TestClient); a few run it on uvicorn
on a free loopback port, and one starts `python -m edgetune.server` (what `make run`
does) as a subprocess. Frames and uploads are real photos (scikit-image).
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from starlette.testclient import TestClient  # noqa: E402
from starlette.websockets import WebSocketDisconnect  # noqa: E402

from edgetune.cli import main  # noqa: E402
from edgetune.errors import EdgetuneError  # noqa: E402
from edgetune.runtime.personalizer import Personalizer  # noqa: E402
from edgetune.server import check_bind, default_bundle, is_loopback  # noqa: E402
from edgetune.server.app import Limits, create_app  # noqa: E402
from edgetune.server.testing import BackgroundServer  # noqa: E402

HOST = {"host": "127.0.0.1:8321"}  # what a browser on this machine sends


# ----------------------------------------------------------------------- helpers


@pytest.fixture(scope="session")
def default_bundle_path(edgetune_cache):
    """The default bundle, built once per test session into the session's cache."""
    return default_bundle(cache_dir=edgetune_cache)


@pytest.fixture(scope="module")
def photos_jpeg():
    """Real photos as JPEG bytes: a few crops each of chelsea (a cat) and coffee."""
    from skimage import data

    out = {}
    rng = np.random.default_rng(0)
    for name in ("chelsea", "coffee"):
        image = getattr(data, name)()
        h, w = image.shape[:2]
        frames = []
        for _ in range(5):
            side = int(min(h, w) * rng.uniform(0.7, 1.0))
            top, left = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
            crop = Image.fromarray(image[top:top + side, left:left + side]).resize((224, 224))
            buf = io.BytesIO()
            crop.save(buf, "JPEG", quality=90)
            frames.append(buf.getvalue())
        out[name] = frames
    return out


@contextlib.contextmanager
def client_for(bundle, profile, **kwargs):
    personalizer = Personalizer(bundle, profile=profile)
    try:
        with TestClient(create_app(personalizer, **kwargs), base_url="http://127.0.0.1:8321",
                        raise_server_exceptions=False) as client:
            yield client, personalizer
    finally:
        personalizer.close()


def upload(client, label, frames):
    return client.post("/api/samples", data={"label": label},
                       files=[("files", (f"{label}-{i}.jpg", f, "image/jpeg"))
                              for i, f in enumerate(frames)])


def receive(ws, kind: str, limit: int = 200) -> dict:
    """The next message of this type (broadcasts of other types are skipped)."""
    for _ in range(limit):
        message = ws.receive_json()
        if message["type"] == kind:
            return message
    raise AssertionError(f"no {kind!r} message")


def reply(ws) -> dict:
    """The next message that is not a broadcast."""
    for _ in range(200):
        message = ws.receive_json()
        if message["type"] not in ("state", "progress", "training_started", "training_done"):
            return message
    raise AssertionError("no reply")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------------- WebSocket


def test_websocket_records_predicts_and_streams_training(default_bundle_path, tmp_path,
                                                        photos_jpeg):
    with client_for(default_bundle_path, tmp_path / "p") as (client, p):
        for name in ("cat", "coffee"):
            assert client.post("/api/classes", json={"name": name}).status_code == 201
        with client.websocket_connect("/ws", headers=HOST) as ws:
            state = receive(ws, "state")
            assert [c["name"] for c in state["classes"]] == ["cat", "coffee"]
            assert not state["ready"] and "too few" in state["reason"]

            for label, name in (("cat", "chelsea"), ("coffee", "coffee")):
                ws.send_json({"type": "record", "label": label})
                assert reply(ws) == {"type": "recording", "label": label}
                for i, frame in enumerate(photos_jpeg[name][:4]):
                    ws.send_bytes(frame)
                    got = reply(ws)
                    assert got["type"] == "recorded" and got["label"] == label
                    assert got["count"] == i + 1
            ws.send_json({"type": "record", "label": None})
            assert reply(ws)["label"] is None
            assert p.counts() == {"cat": 4, "coffee": 4}

            ws.send_bytes(photos_jpeg["chelsea"][4])  # before training: prototypes
            got = reply(ws)
            assert got["type"] == "prediction" and got["label"] == "cat"
            assert got["source"] == "prototypes" and got["ms"] > 0

            assert client.post("/api/train", json={"epochs": 20}).status_code == 202
            assert receive(ws, "training_started")["epochs"] == 20
            done = receive(ws, "training_done")["run"]
            assert done["done"] and len(done["points"]) >= 1
            losses = [loss for _, loss in done["points"]]
            assert losses[-1] <= losses[0]
            assert receive(ws, "state")["trained"]

            for name, label in (("coffee", "coffee"), ("chelsea", "cat")):
                encoded = base64.b64encode(photos_jpeg[name][4]).decode()
                ws.send_json({"type": "frame", "image": "data:image/jpeg;base64," + encoded})
                got = reply(ws)
                assert (got["label"], got["source"]) == (label, "head")
                assert abs(sum(got["scores"].values()) - 1) < 1e-4


def test_predictions_continue_while_training_runs(default_bundle_path, tmp_path, photos_jpeg):
    with client_for(default_bundle_path, tmp_path / "p") as (client, p):
        for label, name in (("cat", "chelsea"), ("coffee", "coffee")):
            client.post("/api/classes", json={"name": label})
            assert upload(client, label, photos_jpeg[name]).status_code == 200
        with client.websocket_connect("/ws", headers=HOST) as ws:
            r = client.post("/api/train", json={"epochs": 10000, "early_stop": False})
            assert r.status_code == 202 and r.json()["training"]
            assert client.post("/api/train", json={}).json()["code"] == "training"
            during = 0
            for _ in range(5):
                ws.send_bytes(photos_jpeg["coffee"][0])
                got = reply(ws)
                assert got["type"] == "prediction" and got["label"] == "coffee"
                during += p.is_training
            assert during >= 3, "training ended before the predictions were made"
            progress = receive(ws, "progress")
            assert progress["points"] and progress["epoch"] >= 1
            assert client.post("/api/train/stop").status_code == 200
            assert not p.is_training
            assert receive(ws, "training_done")["run"]["done"]


def test_malformed_and_oversized_websocket_messages_get_error_replies(default_bundle_path,
                                                                      tmp_path, photos_jpeg):
    limits = Limits()
    with client_for(default_bundle_path, tmp_path / "p") as (client, p):
        client.post("/api/classes", json={"name": "cat"})
        with client.websocket_connect("/ws", headers=HOST) as ws:
            receive(ws, "state")
            bad = [
                ("text", "not json", "bad_json"),
                ("text", "[1, 2]", "bad_message"),
                ("text", '{"no": "type"}', "bad_message"),
                ("text", '{"type": "dance"}', "bad_message"),
                ("text", '{"type": "record", "label": 5}', "bad_name"),
                ("text", '{"type": "record", "label": "  "}', "bad_name"),
                ("text", '{"type": "record", "label": "dog"}', "unknown_class"),
                ("text", '{"type": "frame", "image": 12}', "bad_image"),
                ("text", '{"type": "frame", "image": "@@not base64@@"}', "bad_image"),
                ("text", json.dumps({"type": "ping", "pad": "x" * limits.message_chars}),
                 "too_large"),
                ("text", json.dumps({"type": "frame", "image": "A" * (3 * 1024 * 1024)}),
                 "frame_too_large"),
                ("bytes", b"", "bad_image"),
                ("bytes", b"this is not an image", "bad_input"),
                ("bytes", photos_jpeg["coffee"][0][:500], "bad_input"),  # truncated JPEG
                ("bytes", b"\xff" * (limits.frame_bytes + 1), "frame_too_large"),
            ]
            for kind, payload, code in bad:
                (ws.send_text if kind == "text" else ws.send_bytes)(payload)
                got = reply(ws)
                assert got["type"] == "error", (payload[:40], got)
                assert got["code"] == code, (payload[:40], got)
                assert got["message"]
            # no samples yet: a frame gets a prediction without a label, not an error
            ws.send_bytes(photos_jpeg["chelsea"][0])
            got = reply(ws)
            assert got["type"] == "prediction" and got["label"] is None and "no samples" in \
                got["message"]
            # the same connection still works
            ws.send_json({"type": "ping", "id": 7})
            assert reply(ws) == {"type": "pong", "id": 7}
            ws.send_json({"type": "record", "label": "cat"})
            reply(ws)
            ws.send_bytes(photos_jpeg["chelsea"][0])
            assert reply(ws)["type"] == "recorded"
        assert client.get("/api/state").json()["samples"] == 1


def test_malformed_and_oversized_http_requests_get_error_replies(default_bundle_path, tmp_path,
                                                                 photos_jpeg):
    limits = Limits(upload_bytes=256 * 1024)
    with client_for(default_bundle_path, tmp_path / "p", limits=limits) as (client, p):
        def error(response, status, code):
            assert response.status_code == status, response.text
            body = response.json()
            assert body["code"] == code and body["error"], body

        error(client.post("/api/classes", content=b"{oops",
                          headers={"content-type": "application/json"}), 400, "bad_json")
        error(client.post("/api/classes", json=["cat"]), 400, "bad_json")
        error(client.post("/api/classes", json={"name": ""}), 400, "bad_name")
        error(client.post("/api/classes", json={"name": "x" * 300}), 400, "bad_name")
        error(client.post("/api/classes", json={"name": "a\x00b"}), 400, "bad_name")
        error(client.post("/api/classes", json={"name": "cat", "pad": "x" * 70_000}), 413,
              "too_large")

        def chunks():  # no Content-Length: the limit counts the bytes as they arrive
            for _ in range(100):
                yield b" " * 1024

        error(client.post("/api/classes", content=chunks(),
                          headers={"content-type": "application/json"}), 413, "too_large")
        assert client.post("/api/classes", json={"name": "cat"}).status_code == 201
        error(client.post("/api/classes", json={"name": "cat"}), 400, "bad_input")  # exists
        error(client.patch("/api/classes?name=dog", json={"name": "x"}), 400, "bad_input")
        error(client.patch("/api/classes", json={"name": "x"}), 400, "bad_name")
        error(client.delete("/api/classes?name=dog"), 400, "bad_input")

        error(upload(client, "cat", [photos_jpeg["chelsea"][0]] * 20), 413, "too_large")
        error(upload(client, "cat", [b"GIF89a not really"]), 400, "bad_input")
        error(upload(client, "dog", photos_jpeg["chelsea"][:1]), 404, "unknown_class")
        error(client.post("/api/samples", data={"label": "cat"}), 400, "no_files")
        error(client.post("/api/samples", json={"label": "cat"}), 415, "bad_content_type")
        error(client.post("/api/samples", content=b"--x\r\nnonsense",
                          headers={"content-type": "multipart/form-data; boundary=x"}), 400,
              "bad_name")
        error(client.post("/api/samples", content=b"--x\r\nnonsense",
                          headers={"content-type": "multipart/form-data"}), 400, "bad_request")
        assert p.counts() == {"cat": 0}  # a failed upload adds nothing

        error(client.post("/api/predict", content=b"", headers={"content-type": "image/jpeg"}),
              400, "bad_image")
        error(client.post("/api/predict", content=b"nope",
                          headers={"content-type": "image/png"}), 400, "bad_input")
        error(client.post("/api/train", json={"epochs": 0}), 400, "bad_epochs")
        error(client.post("/api/train", json={"epochs": "5"}), 400, "bad_epochs")
        error(client.post("/api/train", json={"early_stop": "yes"}), 400, "bad_json")
        error(client.post("/api/train"), 409, "not_ready")
        error(client.get("/api/model.onnx"), 409, "not_trained")
        error(client.delete("/api/samples/last?label=cat"), 404, "no_samples")
        error(client.delete("/api/samples/12345"), 400, "bad_input")
        error(client.get("/api/nothing"), 404, "not_found")
        error(client.put("/api/state"), 405, "method_not_allowed")

        # and the server keeps serving
        assert client.get("/api/health").json() == {"ok": True}
        assert upload(client, "cat", photos_jpeg["chelsea"][:2]).json()["added"] == 2
        assert client.delete("/api/samples/last?label=cat").status_code == 200
        r = client.post("/api/predict", content=photos_jpeg["chelsea"][0],
                        headers={"content-type": "image/jpeg"})
        assert r.json()["label"] == "cat"
        page = client.get("/")
        assert page.status_code == 200 and "Teachable camera" in page.text
        assert "default-src 'self'" in page.headers["content-security-policy"]
        assert client.get("/static/app.js").status_code == 200


def test_the_page_loads_its_javascript_modules_from_this_server(default_bundle_path, tmp_path):
    """index.html loads app.js as a module; app.js and every module it imports (./x.js,
    followed to the end) are served as JavaScript, which the CSP allows from 'self'."""
    import re

    with client_for(default_bundle_path, tmp_path / "p") as (client, _):
        page = client.get("/")
        assert '<script type="module" src="/static/app.js"></script>' in page.text
        csp = page.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "'unsafe-inline'" not in csp
        seen, todo = set(), ["app.js"]
        while todo:
            name = todo.pop()
            if name in seen:
                continue
            seen.add(name)
            r = client.get(f"/static/{name}")
            assert r.status_code == 200, name
            assert r.headers["content-type"].split(";")[0] in (
                "text/javascript", "application/javascript"), (name, r.headers["content-type"])
            assert r.headers["x-content-type-options"] == "nosniff"
            assert len(r.text.splitlines()) < 600, f"{name} is over 600 lines"
            todo += re.findall(r'from "\./([\w-]+\.js)"', r.text)
        assert {"app.js", "ui.js", "camera.js", "microphone.js"} <= seen, seen


def test_a_damaged_profile_is_a_server_error_that_names_the_file_and_the_fix(
        default_bundle_path, tmp_path, photos_jpeg):
    """A corrupt bundle or checkpoint is 500 corrupt_profile (not a 409 conflict);
    another process writing the profile is 409 profile_locked."""
    from edgetune.defaults import EPOCHS
    from edgetune.errors import CorruptCheckpointError, ProfileLockedError

    with client_for(default_bundle_path, tmp_path / "p") as (client, p):
        assert client.get("/api/state").json()["default_epochs"] == EPOCHS
        for label, name in (("cat", "chelsea"), ("coffee", "coffee")):
            client.post("/api/classes", json={"name": label})
            assert upload(client, label, photos_jpeg[name][:3]).status_code == 200
        assert client.post("/api/train", json={"epochs": 3}).status_code == 202
        assert p.wait_training(60) and p.trained
        assert p.precision == "int8"  # the default bundle's int8 base: the one export reads
        base = p.profile / "bundle.edgetune" / "base.int8.onnx"
        base.unlink()  # never write through: the file may be a hard link to the cache's
        base.write_bytes(b"not the base graph")  # export reads it again, verifying its hash
        r = client.get("/api/model.onnx")
        assert r.status_code == 500 and r.json()["code"] == "corrupt_profile", r.text
        message = r.json()["error"]
        assert "base.int8.onnx" in message and str(p.profile) in message
        assert "bundle.edgetune" in message and "restart" in message

        def damaged(*args, **kwargs):
            raise CorruptCheckpointError(f"{p.profile}/checkpoints/ckpt-000003.safetensors "
                                         f"is damaged: truncated")

        p.predict = damaged
        r = client.post("/api/predict", content=photos_jpeg["chelsea"][0],
                        headers={"content-type": "image/jpeg"})
        assert r.status_code == 500 and r.json()["code"] == "corrupt_profile"
        assert "ckpt-000003.safetensors" in r.json()["error"]
        assert "checkpoints" in r.json()["error"] and "--profile" in r.json()["error"]
        with client.websocket_connect("/ws", headers=HOST) as ws:
            receive(ws, "state")
            ws.send_bytes(photos_jpeg["chelsea"][0])
            got = reply(ws)
            assert (got["type"], got["code"]) == ("error", "corrupt_profile")
            assert "ckpt-000003.safetensors" in got["message"]

        def locked(*args, **kwargs):
            raise ProfileLockedError("another process (PID 4242) writes to this profile")

        p.add_class = locked
        r = client.post("/api/classes", json={"name": "dog"})
        assert r.status_code == 409 and r.json()["code"] == "profile_locked"
        assert "4242" in r.json()["error"]


def test_python_m_edgetune_server_runs_without_the_cli_and_shows_defaults():
    r = subprocess.run([sys.executable, "-X", "importtime", "-m", "edgetune.server", "--help"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "default: 127.0.0.1" in r.stdout and "default: 8321" in r.stdout
    assert "edgetune.cli" not in r.stderr and "starlette" not in r.stderr


def test_restart_with_the_same_profile_keeps_classes_samples_and_model(default_bundle_path,
                                                                       tmp_path, photos_jpeg):
    profile = tmp_path / "profile"
    with client_for(default_bundle_path, profile) as (client, p):
        for label, name in (("cat", "chelsea"), ("coffee", "coffee")):
            client.post("/api/classes", json={"name": label})
            assert upload(client, label, photos_jpeg[name][:4]).status_code == 200
        client.post("/api/classes", json={"name": "empty"})
        client.patch("/api/classes?name=coffee", json={"name": "espresso"})
        client.delete("/api/classes?name=empty")
        assert client.post("/api/train", json={"epochs": 15}).status_code == 202
        assert p.wait_training(60)
        before = client.get("/api/state").json()
        assert before["trained"]
    # a new process would pass no bundle: the profile has its own copy
    with client_for(None, profile) as (client, p):
        after = client.get("/api/state").json()
        assert after["classes"] == before["classes"] == [
            {"name": "cat", "count": 4}, {"name": "espresso", "count": 4}]
        assert after["trained"]
        r = client.post("/api/predict", files={"image": ("x.jpg", photos_jpeg["coffee"][4],
                                                         "image/jpeg")})
        assert (r.json()["label"], r.json()["source"]) == ("espresso", "head")
        model = client.get("/api/model.onnx")
        assert model.status_code == 200 and len(model.content) > 1_000_000
        assert "attachment" in model.headers["content-disposition"]


# ----------------------------------------------------------------------- access


def test_non_loopback_bind_is_refused_without_a_token(capsys):
    for host in ("127.0.0.1", "127.0.0.2", "localhost", "::1", "[::1]"):
        assert is_loopback(host)
        check_bind(host, None)
    for host in ("0.0.0.0", "::", "192.168.1.20", "10.0.0.1", "example.com", ""):
        assert not is_loopback(host)
        with pytest.raises(EdgetuneError, match="token"):
            check_bind(host, None)
        check_bind(host, "s3cret")  # with a token it may
    with pytest.raises(EdgetuneError, match="empty"):
        check_bind("0.0.0.0", "  ")
    # the command refuses before loading anything
    assert main(["serve", "--host", "0.0.0.0", "--port", str(free_port())]) == 1
    assert "refusing to listen on 0.0.0.0" in capsys.readouterr().err


def test_a_token_is_required_on_every_request_when_given(default_bundle_path, tmp_path):
    with client_for(default_bundle_path, tmp_path / "p", token="s3cret",
                    loopback_only=False) as (client, _):
        lan = {"host": "192.168.1.20:8321"}
        for path in ("/", "/api/state", "/static/app.js", "/api/model.onnx"):
            r = client.get(path, headers=lan)
            assert r.status_code == 401 and r.json()["code"] == "unauthorized"
        assert client.get("/api/state?token=wrong", headers=lan).status_code == 401
        assert client.get("/api/state", headers={**lan, "authorization": "Bearer wrong"}
                          ).status_code == 401
        assert client.get("/api/state", headers={**lan, "authorization": "Bearer s3cret"}
                          ).status_code == 200
        with pytest.raises(WebSocketDisconnect) as closed:
            with client.websocket_connect("/ws", headers=lan) as ws:
                ws.receive_json()
        assert closed.value.code == 1008
        # the page: /?token= sets an HttpOnly cookie and drops the token from the address
        r = client.get("/?token=s3cret", headers=lan, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/"
        cookie = r.headers["set-cookie"]
        assert "edgetune_token=s3cret" in cookie and "HttpOnly" in cookie
        assert "samesite=strict" in cookie.lower()
        client.cookies.set("edgetune_token", "s3cret")
        assert client.get("/", headers=lan).status_code == 200
        with client.websocket_connect("/ws", headers=lan) as ws:
            assert ws.receive_json()["type"] == "state"


def test_foreign_hosts_and_origins_are_refused(default_bundle_path, tmp_path):
    with client_for(default_bundle_path, tmp_path / "p") as (client, _):
        # DNS rebinding: a page of evil.example resolved to 127.0.0.1
        r = client.get("/api/state", headers={"host": "evil.example:8321"})
        assert r.status_code == 403 and r.json()["code"] == "bad_host"
        for host in ("localhost:8321", "127.0.0.1", "[::1]:8321"):
            assert client.get("/api/state", headers={"host": host}).status_code == 200
        # cross-site requests: a form posted from another site, a foreign WebSocket
        r = client.post("/api/classes", json={"name": "x"},
                        headers={"origin": "http://evil.example"})
        assert r.status_code == 403 and r.json()["code"] == "bad_origin"
        r = client.post("/api/classes", json={"name": "x"},
                        headers={"origin": "http://127.0.0.1:8321"})
        assert r.status_code == 201
        with pytest.raises(WebSocketDisconnect):
            with client.websocket_connect("/ws", headers={**HOST,
                                                          "origin": "http://evil.example"}) as ws:
                ws.receive_json()


# ----------------------------------------------------------------------- real servers


def test_on_uvicorn_bad_messages_do_not_stop_the_server(default_bundle_path, tmp_path,
                                                       photos_jpeg):
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    limits = Limits()
    personalizer = Personalizer(default_bundle_path, profile=tmp_path / "p")
    personalizer.add_samples(photos_jpeg["chelsea"][:2] + photos_jpeg["coffee"][:2],
                             ["cat", "cat", "coffee", "coffee"])
    try:
        with BackgroundServer(create_app(personalizer)) as server:
            url = f"ws://127.0.0.1:{server.port}/ws"
            with connect(url, max_size=None) as ws:
                json.loads(ws.recv())  # state
                ws.send(b"\x00" * (limits.frame_bytes + 10))
                assert json.loads(ws.recv())["code"] == "frame_too_large"
                ws.send("{{{")
                assert json.loads(ws.recv())["code"] == "bad_json"
                ws.send(photos_jpeg["coffee"][3])
                assert json.loads(ws.recv())["label"] == "coffee"
            # beyond what uvicorn accepts per message, the protocol closes (1009)
            with connect(url, max_size=None) as ws:
                json.loads(ws.recv())
                ws.send(b"\x00" * (limits.ws_max_size + 1))
                with pytest.raises(ConnectionClosed) as closed:
                    for _ in range(5):
                        ws.recv(timeout=10)
                assert closed.value.rcvd is None or closed.value.rcvd.code == 1009
            # HTTP: too large, malformed; then everything still works
            request = urllib.request.Request(server.url + "api/classes", method="POST",
                                             data=b"x" * 100_000,
                                             headers={"content-type": "application/json"})
            with pytest.raises(urllib.error.HTTPError) as err:
                urllib.request.urlopen(request, timeout=10)
            assert err.value.code == 413
            request = urllib.request.Request(server.url + "api/train", method="POST",
                                             data=b"[", headers={"content-type": "x"})
            with pytest.raises(urllib.error.HTTPError) as err:
                urllib.request.urlopen(request, timeout=10)
            assert err.value.code == 400
            with connect(url) as ws:
                json.loads(ws.recv())
                ws.send(photos_jpeg["chelsea"][3])
                assert json.loads(ws.recv())["label"] == "cat"
            with urllib.request.urlopen(server.url + "api/state", timeout=10) as r:
                assert json.loads(r.read())["samples"] == 4
    finally:
        personalizer.close()


def test_python_m_edgetune_server_serves_the_default_bundle(edgetune_cache,
                                                           default_bundle_path, tmp_path):
    """What `make run` starts: no bundle given, so the default one (from the cache)."""
    port = free_port()
    env = {**os.environ, "EDGETUNE_CACHE": str(edgetune_cache),
           "EDGETUNE_PROFILE": str(tmp_path / "profile")}
    env.pop("EDGETUNE_TOKEN", None)
    proc = subprocess.Popen([sys.executable, "-m", "edgetune.server", "--port", str(port)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/state",
                                            timeout=2) as r:
                    state = json.loads(r.read())
                break
            except (urllib.error.URLError, ConnectionError):
                assert proc.poll() is None, proc.communicate()[1]
                assert time.monotonic() < deadline, "the server did not start"
                time.sleep(0.2)
        assert state["classes"] == [] and not state["trained"]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as r:
            assert b"Teachable camera" in r.read()
        assert (tmp_path / "profile" / "bundle.edgetune" / "manifest.json").is_file()
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert f"http://127.0.0.1:{port}/" in err


def test_training_progress_is_throttled_and_the_curve_stays_bounded(default_bundle_path,
                                                                    tmp_path):
    from edgetune.server.session import MAX_POINTS, Studio, TrainingRun

    personalizer = Personalizer(default_bundle_path, profile=tmp_path / "p")
    try:
        studio = Studio(personalizer)
        sent = []
        studio.hub.publish = sent.append
        run = TrainingRun(1, 10_000)
        for epoch in range(1, 10_001):
            studio._on_record(run, {"epoch": epoch, "loss": 1.0 / epoch})
        studio._on_record(run, {"epoch": 10_000, "event": "rollback", "loss": float("nan"),
                                "message": "rolled back"})
        assert len(run.points) <= MAX_POINTS
        epochs = [e for e, _ in run.points]
        assert epochs == sorted(epochs) and epochs[-1] > 9_000
        assert len(sent) < 100  # ~20 messages a second, not one per epoch
        assert sent[-1]["events"][-1]["loss"] is None  # NaN is not JSON
        json.dumps(sent, allow_nan=False)
        assert any(m["replace"] for m in sent[1:])  # pages replace the thinned curve
    finally:
        personalizer.close()
