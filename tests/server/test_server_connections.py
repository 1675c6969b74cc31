"""Connections and HTTPS on real uvicorn processes and sockets.

- Silent clients (connect and say nothing, or half a request line) cannot lock the page
  out: uvicorn's 64-connection limit used to turn every later request away with 503
  for as long as they stayed; now a new connection pushes out the oldest silent one,
  and a silent one is closed after the first-request deadline.
- Busy connections (WebSockets) still hit the limit: 503 at once, never a queue.
- `edgetune serve --host 0.0.0.0 --token T` serves HTTPS with a self-signed
  certificate made on first use (key 0600, fingerprint printed and equal to the one
  the server presents), kept across restarts; `--tls-cert/--tls-key` use a given pair.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import ssl
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("uvicorn")
pytest.importorskip("websockets")
pytest.importorskip("cryptography")

from websockets.sync.client import connect  # noqa: E402

from edgetune.runtime.personalizer import Personalizer  # noqa: E402
from edgetune.server import default_bundle  # noqa: E402
from edgetune.server.app import Limits, create_app  # noqa: E402
from edgetune.server.testing import BackgroundServer  # noqa: E402
from edgetune.server.tls import certificate_for  # noqa: E402

LIMITS = Limits(first_request_timeout=2.0)


@pytest.fixture(scope="session")
def default_bundle_path(edgetune_cache):
    return default_bundle(cache_dir=edgetune_cache)


@pytest.fixture(scope="module")
def served(default_bundle_path, tmp_path_factory):
    p = Personalizer(default_bundle_path, profile=tmp_path_factory.mktemp("conn") / "p")
    try:
        with BackgroundServer(create_app(p, limits=LIMITS), limits=LIMITS) as server:
            yield server
    finally:
        p.close()


def get(url: str, timeout: float = 5, context=None) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=context) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_silent_connections_cannot_lock_the_page_out(served):
    with contextlib.ExitStack() as stack:
        sockets = []
        for i in range(100):  # more than the 64-connection limit, all silent or half-sent
            s = stack.enter_context(socket.create_connection(("127.0.0.1", served.port), 5))
            if i % 4 == 0:
                s.sendall(b"GET /api/state HTTP/1.1\r\nHost: 127.0.")
            sockets.append(s)
        time.sleep(0.3)  # let the server accept them all
        for path in ("", "api/health", "api/state", "static/app.js"):
            t0 = time.monotonic()
            status, body = get(served.url + path)
            assert status == 200, (path, status, body[:200])
            assert time.monotonic() - t0 < 3, path  # served at once, not after a timeout
        # the oldest silent ones were pushed out to make room: they read end-of-file
        sockets[0].settimeout(5)
        assert sockets[0].recv(10) == b""
        # and every silent one is closed once the first-request deadline (2 s) passes
        last = sockets[-1]
        last.settimeout(LIMITS.first_request_timeout + 5)
        t0 = time.monotonic()
        assert last.recv(10) == b""
        assert time.monotonic() - t0 < LIMITS.first_request_timeout + 4


def test_a_request_that_arrives_in_time_is_not_cut_by_the_deadline(served):
    with socket.create_connection(("127.0.0.1", served.port), 5) as s:
        s.sendall(b"GET /api/health HTTP/1.1\r\n")
        time.sleep(LIMITS.first_request_timeout / 4)
        s.sendall(f"Host: 127.0.0.1:{served.port}\r\n\r\n".encode())
        s.settimeout(5)
        assert s.recv(4096).startswith(b"HTTP/1.1 200")
        time.sleep(LIMITS.first_request_timeout + 0.5)  # kept alive (5 s), not cut at 2 s
        s.sendall(f"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1:{served.port}\r\n\r\n"
                  .encode())
        assert s.recv(4096).startswith(b"HTTP/1.1 200")


def test_beyond_the_limit_busy_connections_get_503_at_once_and_the_server_recovers(served):
    """WebSockets are busy, not silent: 64 of them fill uvicorn's limit_concurrency, and
    the server sheds load instead of queueing it."""
    with contextlib.ExitStack() as stack:
        for _ in range(64):
            stack.enter_context(connect(f"ws://127.0.0.1:{served.port}/ws", proxy=None,
                                        open_timeout=10, close_timeout=1))
        t0 = time.monotonic()
        assert get(served.url + "api/health")[0] == 503
        assert time.monotonic() - t0 < 3
    deadline = time.monotonic() + 10
    while get(served.url + "api/health")[0] != 200:
        assert time.monotonic() < deadline, "the server did not recover"
        time.sleep(0.1)


# ----------------------------------------------------------------------- HTTPS


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def presented_fingerprint(port: int) -> str:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), 5) as raw, \
            context.wrap_socket(raw) as tls:
        der = tls.getpeercert(binary_form=True)
    return ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())


@contextlib.contextmanager
def serve(args: list[str], env: dict):
    proc = subprocess.Popen([sys.executable, "-m", "edgetune.server", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        yield proc
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


def wait_https(proc, port: int, context) -> dict:
    deadline = time.monotonic() + 60
    while True:
        try:
            status, body = get(f"https://127.0.0.1:{port}/api/state", 2, context)
            return {"status": status, "body": body}
        except (urllib.error.URLError, ConnectionError, ssl.SSLError):
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.2)


def test_serve_on_the_network_speaks_https_with_a_self_signed_certificate(
        edgetune_cache, default_bundle_path, tmp_path):
    env = {**os.environ, "EDGETUNE_CACHE": str(edgetune_cache),
           "EDGETUNE_PROFILE": str(tmp_path / "profile"), "EDGETUNE_TOKEN": ""}
    port = free_port()
    tls_dir = Path(edgetune_cache) / "tls"
    insecure = ssl.create_default_context()
    insecure.check_hostname = False
    insecure.verify_mode = ssl.CERT_NONE
    args = ["--host", "0.0.0.0", "--port", str(port), "--token", "s3cret"]
    prints = []
    for _ in range(2):  # made on first use, then kept
        with serve(args, env) as proc:
            answer = wait_https(proc, port, insecure)
            assert answer["status"] == 401  # HTTPS, and the token is still required
            seen = presented_fingerprint(port)
            status, _ = get(f"https://127.0.0.1:{port}/api/health?token=s3cret", 5, insecure)
            assert status == 200
            # plain HTTP on the same port gets no page
            with pytest.raises((urllib.error.URLError, ConnectionError)):
                get(f"http://127.0.0.1:{port}/api/health?token=s3cret", 5)
            proc.terminate()
            err = proc.communicate(timeout=30)[1]
        assert f"SHA-256 fingerprint {seen}" in err, err
        assert f"https://127.0.0.1:{port}/?token=<your token>" in err
        prints.append(seen)
    assert prints[0] == prints[1]
    assert "made just now" not in err and "kept" in err
    key = tls_dir / "key.pem"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    # a browser that trusts this certificate (as a phone does once the user accepts it)
    trusting = ssl.create_default_context(cafile=str(tls_dir / "cert.pem"))
    with serve(args, env) as proc:
        answer = wait_https(proc, port, trusting)  # verified: the chain and 127.0.0.1
        assert answer["status"] == 401
    files = certificate_for(None, None, directory=tls_dir)
    assert files.fingerprint == prints[0] and not files.created


def test_a_given_certificate_is_used_and_a_mismatched_pair_is_refused(edgetune_cache,
                                                                      default_bundle_path,
                                                                      tmp_path):
    mine = certificate_for(None, None, directory=tmp_path / "mine")
    other = certificate_for(None, None, directory=tmp_path / "other")
    assert mine.created and mine.fingerprint != other.fingerprint
    env = {**os.environ, "EDGETUNE_CACHE": str(edgetune_cache),
           "EDGETUNE_PROFILE": str(tmp_path / "profile"), "EDGETUNE_TOKEN": ""}
    refused = subprocess.run(
        [sys.executable, "-m", "edgetune.server", "--port", str(free_port()),
         "--tls-cert", str(mine.cert), "--tls-key", str(other.key)],
        env=env, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1
    assert "does not belong to the certificate" in refused.stderr, refused.stderr
    refused = subprocess.run(
        [sys.executable, "-m", "edgetune.server", "--tls-cert", str(mine.cert)],
        env=env, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1 and "--tls-key" in refused.stderr
    port = free_port()
    trusting = ssl.create_default_context(cafile=str(mine.cert))
    with serve(["--port", str(port), "--tls-cert", str(mine.cert), "--tls-key", str(mine.key)],
               env) as proc:
        answer = wait_https(proc, port, trusting)
        assert answer["status"] == 200 and json.loads(answer["body"])["classes"] == []
        assert presented_fingerprint(port) == mine.fingerprint
