"""The teachable camera's server under load and against hostile clients.

tests/test_server.py covers the malformed and oversized messages one by one; this file
adds what a hostile or broken client does beyond them, on uvicorn on a free loopback
port (the real protocol stack, not the in-process TestClient):

- random and mutated binary frames, random text messages (any Unicode, lone surrogates
  in JSON), a text frame that is not UTF-8: error replies or a closed connection, never
  an internal error, and the next message or client is served;
- every size limit at its exact boundary (the limit passes, one byte more is refused);
- HTTP bodies that lie about their Content-Length (shorter, longer then silent, longer
  then gone), malformed framing; silent, slow and non-reading clients next to a normal
  one (the connection limit and silent connections: test_server_connections.py);
- `edgetune serve --host 0.0.0.0` without a token is refused by the real command,
  before anything binds;
- 16 concurrent WebSocket clients predicting for a few seconds, idle and while training,
  against `python -m edgetune.server` (bench/server_load.py, which runs 50 clients for
  60 s): no error, and the server's memory stays bounded.
"""

from __future__ import annotations

import base64
import contextlib
import importlib.util
import json
import logging
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
pytest.importorskip("websockets")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from websockets.exceptions import ConnectionClosed  # noqa: E402
from websockets.sync.client import connect  # noqa: E402

from edgetune.runtime.personalizer import Personalizer  # noqa: E402
from edgetune.server import default_bundle  # noqa: E402
from edgetune.server.app import Limits, create_app  # noqa: E402
from edgetune.server.testing import BackgroundServer  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("edgetune_server_load",
                                               ROOT / "bench" / "server_load.py")
server_load = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(server_load)

# small limits, so that the boundaries are cheap to reach
SMALL = Limits(frame_bytes=64 * 1024, upload_bytes=256 * 1024, json_bytes=4 * 1024,
               message_chars=1024, body_timeout=1.0)
BROADCASTS = ("state", "progress", "training_started", "training_done")
FUZZ = settings(max_examples=120, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# ----------------------------------------------------------------------- helpers


@pytest.fixture(scope="session")
def default_bundle_path(edgetune_cache):
    """The default bundle (EfficientNet-Lite0 + softmax head), as in test_server.py."""
    return default_bundle(cache_dir=edgetune_cache)


@pytest.fixture(scope="module")
def photos_jpeg():
    """Real photos as 224x224 JPEG: 5 random crops each of chelsea (a cat) and coffee."""
    return {name: server_load.jpeg_crops(name, 5, seed=i)
            for i, name in enumerate(("chelsea", "coffee"))}


@pytest.fixture(scope="module")
def served(default_bundle_path, photos_jpeg, tmp_path_factory):
    """uvicorn on a free loopback port; a profile with a trained head (cat, coffee)."""
    p = Personalizer(default_bundle_path, profile=tmp_path_factory.mktemp("served") / "p")
    p.add_samples(photos_jpeg["chelsea"][:4] + photos_jpeg["coffee"][:4],
                  ["cat"] * 4 + ["coffee"] * 4)
    p.fit(epochs=15)
    try:
        with BackgroundServer(create_app(p, limits=SMALL), limits=SMALL) as server:
            server.personalizer = p
            yield server
    finally:
        p.close()


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)


@pytest.fixture
def server_errors():
    """ERROR records of uvicorn and the app while the test runs (uvicorn's loggers do
    not propagate to the root logger, so caplog misses them)."""
    handler = _Records()
    loggers = [logging.getLogger(name) for name in ("uvicorn", "edgetune.server")]
    for logger in loggers:
        logger.addHandler(handler)
    yield handler.records
    for logger in loggers:
        logger.removeHandler(handler)


def ws_connect(server, **kwargs):
    return connect(f"ws://127.0.0.1:{server.port}/ws", max_size=None, proxy=None,
                   open_timeout=10, **kwargs)


def next_reply(ws, timeout: float = 30) -> dict:
    """The next message that is not a broadcast."""
    for _ in range(200):
        message = json.loads(ws.recv(timeout=timeout))
        if message["type"] not in BROADCASTS:
            return message
    raise AssertionError("no reply")


def predicts(server, frame: bytes, label: str) -> None:
    """A fresh client gets the right prediction for a real photo."""
    with ws_connect(server) as ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "state"
        ws.send(frame)
        got = next_reply(ws)
        assert (got["type"], got["label"], got["source"]) == ("prediction", label, "head"), got


def get(server, path: str, timeout: float = 10) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(server.url + path, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, {}


def request(server, method: str, path: str, body: bytes,
            content_type: str = "application/json") -> tuple[int, dict]:
    req = urllib.request.Request(server.url + path, data=body, method=method,
                                 headers={"content-type": content_type})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def raw_exchange(port: int, data: bytes, *, half_close: bool = False,
                 timeout: float = 8) -> bytes:
    """Send raw bytes; what the server answers until it closes or `timeout` passes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        if half_close:
            s.shutdown(socket.SHUT_WR)
        out, deadline = b"", time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not chunk:
                break
            out += chunk
            if out.startswith(b"HTTP/1.1 4") and b"\r\n\r\n" in out and \
                    not half_close and b"connection: close" not in out.lower():
                head, _, body = out.partition(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                if len(body) >= length:  # one whole response: enough
                    break
        return out


def status_of(response: bytes) -> int | None:
    return int(response.split(b" ", 2)[1]) if response.startswith(b"HTTP/1.1 ") else None


# ----------------------------------------------------------------------- WebSocket fuzzing


def test_random_and_mutated_binary_frames_get_error_replies(served, photos_jpeg,
                                                            server_errors):
    jpegs = photos_jpeg["chelsea"] + photos_jpeg["coffee"]

    @st.composite
    def frames(draw):
        kind = draw(st.sampled_from(["random", "mutated", "truncated", "soi", "b64"]))
        if kind == "random":
            return "bytes", draw(st.binary(min_size=1, max_size=4096))
        if kind == "b64":  # the text form of a frame, with random bytes
            return "text", json.dumps({"type": "frame", "image": base64.b64encode(
                draw(st.binary(min_size=1, max_size=2048))).decode()})
        data = bytearray(draw(st.sampled_from(jpegs)))
        if kind == "truncated":
            return "bytes", bytes(data[:draw(st.integers(1, len(data) - 1))])
        if kind == "soi":  # a JPEG start, then garbage
            return "bytes", bytes(data[:2]) + draw(st.binary(max_size=1024))
        for _ in range(draw(st.integers(1, 24))):
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        return "bytes", bytes(data)

    seen = {"error": 0, "prediction": 0}
    with ws_connect(served) as ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "state"

        @FUZZ
        @given(frames())
        def check(frame):
            kind, payload = frame
            ws.send(payload)
            got = next_reply(ws)
            seen[got["type"]] += 1  # KeyError for any other kind of reply
            if got["type"] == "error":
                assert got["code"] in ("bad_input", "bad_image"), got
                assert got["message"]
            else:  # a mutation that still decodes is a valid image
                assert got["label"] in ("cat", "coffee") and got["source"] == "head"

        check()
        ws.send(json.dumps({"type": "ping", "id": 1}))  # the same connection still works
        assert next_reply(ws) == {"type": "pong", "id": 1}
        ws.send(photos_jpeg["coffee"][4])
        assert next_reply(ws)["label"] == "coffee"
    assert seen["error"] > 50
    assert served.personalizer.counts() == {"cat": 4, "coffee": 4}  # nothing recorded
    assert not server_errors, [r.getMessage() for r in server_errors]


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4), max_leaves=12)
SURROGATES = st.text(st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1,
                     max_size=3)


@st.composite
def text_messages(draw):
    kind = draw(st.sampled_from(["text", "json", "typed", "surrogate"]))
    if kind == "text":  # any Unicode, mostly not JSON
        return draw(st.text(max_size=300))
    if kind == "json":
        return json.dumps(draw(JSON_VALUES))
    message = {"type": draw(st.sampled_from(["ping", "record", "frame", "dance", ""]))}
    message.update(draw(st.dictionaries(
        st.sampled_from(["label", "image", "record", "id", "pad"]), JSON_VALUES, max_size=3)))
    if kind == "surrogate":  # "\ud800" escapes: valid JSON, not encodable as UTF-8
        message[draw(st.sampled_from(["label", "record", "type", "id"]))] = \
            draw(SURROGATES) + draw(st.text(max_size=5))
    return json.dumps(message)  # ensure_ascii: surrogates stay escaped


def test_random_text_messages_get_replies_and_never_an_internal_error(served, photos_jpeg,
                                                                      server_errors):
    codes = set()
    with ws_connect(served) as ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "state"

        @FUZZ
        @given(text_messages())
        def check(text):
            ws.send(text)
            got = next_reply(ws)
            assert got["type"] in ("error", "pong", "recording"), got
            if got["type"] == "error":
                assert got["code"] != "internal", (text[:80], got)
                codes.add(got["code"])
            elif got["type"] == "recording" and got["label"] is not None:
                ws.send(json.dumps({"type": "record", "label": None}))  # back to predicting
                assert next_reply(ws)["label"] is None

        check()
        # a lone surrogate as a label is refused by name, not by the database
        ws.send('{"type": "record", "label": "\\ud800"}')
        assert next_reply(ws)["code"] == "bad_name"
        ws.send(photos_jpeg["chelsea"][4])
        assert next_reply(ws)["label"] == "cat"
    assert {"bad_json", "bad_message"} <= codes
    status, body = request(served, "POST", "api/classes", b'{"name": "cat\\udc80"}')
    assert (status, body["code"]) == (400, "bad_name")
    status, body = request(served, "PATCH", "api/classes?name=cat", b'{"name": "\\ud83d"}')
    assert (status, body["code"]) == (400, "bad_name")
    assert served.personalizer.counts() == {"cat": 4, "coffee": 4}
    assert not server_errors, [r.getMessage() for r in server_errors]


def test_a_text_frame_that_is_not_utf8_closes_only_that_connection(served, photos_jpeg):
    with ws_connect(served) as ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "state"
        ws.send(b'{"type": "ping", "id": "\xff\xfe"}', text=True)  # invalid UTF-8 as text
        with pytest.raises(ConnectionClosed) as closed:
            for _ in range(5):
                ws.recv(timeout=10)
        assert closed.value.rcvd is None or closed.value.rcvd.code == 1007
    predicts(served, photos_jpeg["coffee"][4], "coffee")


# ----------------------------------------------------------------------- limits, exactly


def padded(jpeg: bytes, size: int) -> bytes:
    """A real JPEG padded after its end marker to exactly `size` bytes (it still decodes)."""
    return jpeg + b"\0" * (size - len(jpeg))


def test_every_limit_holds_at_its_exact_boundary(served, photos_jpeg):
    jpeg = photos_jpeg["chelsea"][4]
    with ws_connect(served) as ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "state"
        # a binary frame: the limit passes, one byte more is refused
        ws.send(padded(jpeg, SMALL.frame_bytes))
        assert next_reply(ws)["label"] == "cat"
        ws.send(padded(jpeg, SMALL.frame_bytes + 1))
        assert next_reply(ws)["code"] == "frame_too_large"
        # the same frames as base64 text messages
        for size, expected in ((SMALL.frame_bytes, "prediction"),
                               (SMALL.frame_bytes + 1, "error"),
                               (SMALL.frame_bytes + 3, "error")):
            image = base64.b64encode(padded(jpeg, size)).decode()
            ws.send(json.dumps({"type": "frame", "image": "data:image/jpeg;base64," + image}))
            got = next_reply(ws)
            assert got["type"] == expected, (size, got)
            assert expected == "prediction" or got["code"] == "frame_too_large"
        # a text message that is not a frame
        ping = {"type": "ping", "pad": ""}
        ping["pad"] = "x" * (SMALL.message_chars - len(json.dumps(ping)))
        ws.send(json.dumps(ping))
        assert next_reply(ws)["type"] == "pong"
        ping["pad"] += "x"
        ws.send(json.dumps(ping))
        assert next_reply(ws)["code"] == "too_large"
        # what uvicorn accepts per message: up to ws_max_size an error reply ...
        ws.send(b"\0" * SMALL.ws_max_size)
        assert next_reply(ws)["code"] == "frame_too_large"
        ws.send(jpeg)
        assert next_reply(ws)["label"] == "cat"
    with ws_connect(served) as ws:  # ... one byte more closes the connection (1009)
        assert json.loads(ws.recv(timeout=10))["type"] == "state"
        ws.send(b"\0" * (SMALL.ws_max_size + 1))
        with pytest.raises(ConnectionClosed) as closed:
            for _ in range(5):
                ws.recv(timeout=10)
        assert closed.value.rcvd is None or closed.value.rcvd.code == 1009

    # HTTP: a JSON body of exactly json_bytes is read (then the class is unknown: 400) ...
    body = json.dumps({"name": "tea"}).encode()
    body += b" " * (SMALL.json_bytes - len(body))
    status, reply = request(served, "PATCH", "api/classes?name=nobody", body)
    assert (status, reply["code"]) == (400, "bad_input")
    status, reply = request(served, "PATCH", "api/classes?name=nobody", body + b" ")
    assert (status, reply["code"]) == (413, "too_large")
    # ... and a raw image of exactly upload_bytes is predicted
    status, reply = request(served, "POST", "api/predict", padded(jpeg, SMALL.upload_bytes),
                            "image/jpeg")
    assert (status, reply["label"]) == (200, "cat")
    status, reply = request(served, "POST", "api/predict",
                            padded(jpeg, SMALL.upload_bytes + 1), "image/jpeg")
    assert (status, reply["code"]) == (413, "too_large")
    assert served.personalizer.counts() == {"cat": 4, "coffee": 4}


# ----------------------------------------------------------------------- lying and slow HTTP


def test_http_bodies_that_lie_about_their_length(served, photos_jpeg, server_errors):
    host = f"Host: 127.0.0.1:{served.port}\r\n".encode()

    def post(path: str, headers: str, body: bytes) -> bytes:
        return f"POST {path} HTTP/1.1\r\n".encode() + host + headers.encode() + b"\r\n" + body

    body = b'{"name": "x"}'
    jpeg = photos_jpeg["coffee"][4]
    multipart = (b'--b\r\nContent-Disposition: form-data; name="label"\r\n\r\ncat\r\n--b\r\n'
                 b'Content-Disposition: form-data; name="files"; filename="a.jpg"\r\n'
                 b"Content-Type: image/jpeg\r\n\r\n" + jpeg[:300])
    cases = {
        # shorter than the body: the rest is read as a next request, which is malformed
        "short": (post("/api/classes", "Content-Length: 5\r\n", body), False, {400}),
        # longer, then silence: refused when the body stalls (body_timeout = 1 s)
        "long-json": (post("/api/classes", "Content-Length: 500\r\n", body), False, {408}),
        "long-image": (post("/api/predict", "Content-Type: image/jpeg\r\n"
                            "Content-Length: 20000\r\n", jpeg[:300]), False, {408}),
        "long-multipart": (post("/api/samples", "Content-Type: multipart/form-data; "
                                "boundary=b\r\nContent-Length: 20000\r\n", multipart),
                           False, {408}),
        # longer, then the client leaves: nobody to answer, and nothing to log
        "long-gone": (post("/api/classes", "Content-Length: 500\r\n", body), True, {None}),
        "long-gone-upload": (post("/api/samples", "Content-Type: multipart/form-data; "
                                  "boundary=b\r\nContent-Length: 20000\r\n", multipart),
                             True, {None}),
        # more than the limit, announced: refused before the body is read
        "announced": (post("/api/predict", "Content-Type: image/jpeg\r\n"
                           f"Content-Length: {SMALL.upload_bytes + 1}\r\n", b""), False,
                      {413}),
        "huge": (post("/api/classes", "Content-Length: 99999999999999999999999\r\n", body),
                 False, {400, 413}),
        "not-a-number": (post("/api/classes", "Content-Length: 12x\r\n", body), False, {400}),
        "negative": (post("/api/classes", "Content-Length: -1\r\n", body), False, {400}),
        "two-lengths": (post("/api/classes", "Content-Length: 13\r\nContent-Length: 14\r\n",
                             body), False, {400}),
        "length-and-chunked": (post("/api/classes", "Content-Length: 13\r\n"
                                    "Transfer-Encoding: chunked\r\n", body), False, {400, 408}),
        "bad-chunk": (post("/api/classes", "Transfer-Encoding: chunked\r\n",
                           b"zz\r\n" + body + b"\r\n0\r\n\r\n"), False, {400}),
        "not-http": (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(256)),
                     False, {400}),
    }
    t0 = time.monotonic()
    with ThreadPoolExecutor(len(cases)) as pool:  # at once: the stalls overlap
        futures = {name: pool.submit(raw_exchange, served.port, data, half_close=gone)
                   for name, (data, gone, _) in cases.items()}
        answers = {name: f.result() for name, f in futures.items()}
    assert time.monotonic() - t0 < 8, "a stalled body was not cut off"
    for name, (_, _, expected) in cases.items():
        assert status_of(answers[name]) in expected, (name, answers[name][:200])
    for name in ("long-json", "long-image", "long-multipart"):
        assert b'"code":"timeout"' in answers[name], answers[name]
    assert get(served, "api/health") == (200, {"ok": True})
    assert served.personalizer.counts() == {"cat": 4, "coffee": 4}  # nothing added
    assert not server_errors, [r.getMessage() for r in server_errors]


def test_silent_slow_and_non_reading_clients_do_not_hold_up_others(served, photos_jpeg,
                                                                   server_errors):
    port = served.port
    frames = photos_jpeg["chelsea"][:4] + photos_jpeg["coffee"][:4]
    with contextlib.ExitStack() as stack:
        def tcp() -> socket.socket:
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            stack.callback(s.close)
            return s

        for _ in range(30):  # connect and say nothing
            tcp()
        for _ in range(6):  # headers that never end
            tcp().sendall(b"GET /api/state HTTP/1.1\r\nHost: 127.0.0.1:")
        stalled = [tcp() for _ in range(4)]  # a body that never ends
        for s in stalled:
            s.sendall(f"POST /api/classes HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                      f"Content-Length: 1000\r\n\r\n{{".encode())
        for _ in range(2):  # WebSockets that send frames and never read the replies
            # (the client library stops reading too once 16 replies wait: its close
            # handshake then times out, hence the short close_timeout)
            ws = stack.enter_context(ws_connect(served, close_timeout=0.5))
            for frame in frames * 3:
                ws.send(frame)
        for _ in range(2):  # WebSockets that never send
            stack.enter_context(ws_connect(served))
        # 44 connections are held; a normal client is served promptly and correctly
        with ws_connect(served) as ws:
            assert json.loads(ws.recv(timeout=10))["type"] == "state"
            for i, frame in enumerate(frames):
                t0 = time.perf_counter()
                ws.send(frame)
                got = next_reply(ws, timeout=10)
                assert got["label"] == ("cat" if i < 4 else "coffee"), got
                assert time.perf_counter() - t0 < 10  # ~50 ms on an idle machine
        assert get(served, "api/health") == (200, {"ok": True})
        for s in stalled:  # the stalled bodies were cut off after body_timeout
            s.settimeout(10)
            assert status_of(s.recv(4096)) == 408
    predicts(served, frames[0], "cat")
    assert not server_errors, [r.getMessage() for r in server_errors]


# ----------------------------------------------------------------------- the command line


def test_edgetune_serve_refuses_a_non_loopback_host_without_a_token(tmp_path):
    """The real command: exit code 1, a message that says why and what to do, nothing
    bound (an audit hook watches every socket), no profile created."""
    exe = Path(sys.executable).with_name("edgetune")
    if not exe.is_file():
        pytest.skip("the edgetune console script is not installed")
    env = {**os.environ, "EDGETUNE_TOKEN": "", "EDGETUNE_PROFILE": str(tmp_path / "p")}
    port = str(server_load.free_port())
    r = subprocess.run([str(exe), "serve", "--host", "0.0.0.0", "--port", port], env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1, r
    assert "refusing to listen on 0.0.0.0" in r.stderr
    assert "--token" in r.stderr and "--host 127.0.0.1" in r.stderr

    watch = (
        "import json, runpy, sys\n"
        "seen = []\n"
        "sys.addaudithook(lambda event, args: event.startswith('socket.') and "
        "seen.append(event))\n"
        "sys.argv = sys.argv[1:]\n"
        "try:\n"
        "    runpy.run_path(sys.argv[0], run_name='__main__')\n"
        "finally:\n"
        "    print('WATCH', json.dumps([seen, 'uvicorn' in sys.modules]), file=sys.stderr)\n")
    for host in ("::", "192.168.1.20"):
        r = subprocess.run([sys.executable, "-c", watch, str(exe), "serve", "--host", host,
                            "--port", port], env=env, capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 1, r
        assert f"refusing to listen on {host}" in r.stderr
        events, uvicorn_loaded = json.loads(r.stderr.split("WATCH ", 1)[1])
        assert events == [] and not uvicorn_loaded
    assert not (tmp_path / "p").exists()


# ----------------------------------------------------------------------- load


def test_concurrent_clients_predict_without_errors_and_memory_stays_bounded(
        default_bundle_path, edgetune_cache):
    """bench/server_load.py, short: 16 WebSocket clients for 3.5 s idle, then 3.5 s while
    training runs, against `python -m edgetune.server` (a subprocess: its own RSS)."""
    report = server_load.run(clients=16, seconds=3.5, samples=5, epochs=15,
                             bundle=default_bundle_path, cache=edgetune_cache,
                             log=lambda message: None)
    assert server_load.failures(report, max_growth_mb=24) == [], report
    for name in ("idle", "training"):
        phase = report["phases"][name]
        assert phase["connected"] == 16 and phase["errors"] == 0, phase
        assert phase["predictions"] >= 32, phase  # every client got answers
        assert phase["correct"] >= 0.9, phase
    assert report["phases"]["training"]["training_runs"] >= 1
    assert report["phases"]["training"]["broadcasts_received"] > 16  # progress reached them
    # concurrent base-model runs are capped (Limits.model_runs), so many clients cost
    # little memory: ~250 MB here, against ~600 MB with one run per client
    assert report["peak_rss_mb"] < 400, report["peak_rss_mb"]
