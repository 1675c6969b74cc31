"""Flower's Deployment Engine for edgetune: a SuperLink, SuperNodes and one run.

    with SuperLink("127.0.0.1:9092", home) as link:      # flower-superlink --insecure
        report = link.run(FleetConfig(bundle=..., rounds=3, min_clients=3))
    node = start_supernode("127.0.0.1:9092", "me/", home)  # flower-supernode, one profile

Flower 1.42 serves the SuperLink's Fleet API (where devices join), Control API (where
runs are submitted) and runtime API (where the ServerApp talks) over HTTP on one
address, e.g. 127.0.0.1:9092. A run is submitted as a Flower App
written for it: a folder holding only a pyproject.toml whose components are
`edgetune.fleet.server_app:app` and `edgetune.fleet.client_app:app` and whose run
config is the FleetConfig; `flwr run` sends it to the Control API, and the SuperLink
starts the ServerApp, which writes the report. Everything runs on this machine's
installed packages: no dependency is installed at run time (offline).

`home` is the FLWR_HOME of these processes (Flower's config, installed apps, state).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from edgetune.errors import EdgetuneError
from edgetune.fleet.server_app import FleetConfig

__all__ = ["SuperLink", "free_port", "split_address", "start_supernode"]


def _tool(name: str) -> str:
    """A Flower executable of this Python environment."""
    here = Path(sys.executable).parent / name
    found = str(here) if here.exists() else shutil.which(name)
    if not found:
        raise EdgetuneError(f"{name} is not installed: pip install 'edgetune[fleet]'")
    return found


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise EdgetuneError(f"address {address!r}: write it as HOST:PORT (127.0.0.1:9092)")
    return host, int(port)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _wait_port(host: str, port: int, proc: subprocess.Popen, timeout: float, log: Path):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise EdgetuneError(f"the Flower process exited ({proc.returncode}):\n{tail}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise EdgetuneError(f"nothing listens on {host}:{port} after {timeout:.0f} s")


def _env(home: Path) -> dict:
    # Flower starts its helpers (flower-superexec, flwr-serverapp, ...) by name.
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    env = dict(os.environ, FLWR_HOME=str(home), PATH=path)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def _pyproject(cfg: FleetConfig) -> str:
    def value(v):
        return json.dumps(v) if not isinstance(v, bool) else ("true" if v else "false")

    config = "\n".join(f"{k} = {value(v)}" for k, v in cfg.run_config().items())
    return f"""[build-system]
requires = ["setuptools>=77"]
build-backend = "setuptools.build_meta"

[project]
name = "edgetune-fleet"
version = "1.0.0"
description = "edgetune: federated personalization of a bundle's head"
license = "Apache-2.0"
dependencies = []

[tool.flwr.app]
publisher = "edgetune"

[tool.flwr.app.components]
serverapp = "edgetune.fleet.server_app:app"
clientapp = "edgetune.fleet.client_app:app"

[tool.flwr.app.config]
{config}
"""


class SuperLink:
    """flower-superlink --insecure on `address` (all its APIs)."""

    def __init__(self, address: str, home: str | os.PathLike, timeout: float = 60.0):
        self.host, self.port = split_address(address)
        self.home = Path(home)
        self.home.mkdir(parents=True, exist_ok=True)
        self.log = self.home / "superlink.log"
        self.timeout = timeout
        self.proc: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> SuperLink:
        cmd = [_tool("flower-superlink"), "--insecure", "--host", self.host,
               "--port", str(self.port), "--disable-runtime-dependency-installation"]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                         env=_env(self.home), start_new_session=True)
        _wait_port(self.host, self.port, self.proc, self.timeout, self.log)
        return self

    def run(self, cfg: FleetConfig, timeout: float = 3600.0) -> dict:
        """Submit one run and wait until its ServerApp has written its report."""
        cfg.check()
        runs = self.home / "runs"
        runs.mkdir(exist_ok=True)
        app = Path(os.path.realpath(runs / f"app-{time.time_ns()}"))
        app.mkdir()
        report = app / "report.json"
        cfg.report = str(report)
        (app / "pyproject.toml").write_text(_pyproject(cfg))
        config = self.home / "config.toml"
        config.write_text(f'[superlink]\ndefault = "edgetune"\n\n[superlink.edgetune]\n'
                          f'address = "{self.address}"\ninsecure = true\n')
        with open(app / "submit.log", "wb") as log:
            done = subprocess.run([_tool("flwr"), "run", str(app), "edgetune"], cwd=app,
                                  stdout=log, stderr=subprocess.STDOUT, env=_env(self.home),
                                  timeout=120)
        if done.returncode != 0:
            raise EdgetuneError(f"flwr run failed:\n{(app / 'submit.log').read_text()[-2000:]}")
        deadline = time.monotonic() + timeout
        while not report.exists():
            if self.proc is not None and self.proc.poll() is not None:
                raise EdgetuneError(f"the SuperLink exited; see {self.log}")
            if time.monotonic() > deadline:
                raise EdgetuneError(f"the run did not finish within {timeout:.0f} s; "
                                    f"see {self.log}")
            time.sleep(0.5)
        result = json.loads(report.read_text())
        if "error" in result:
            raise EdgetuneError(f"the fleet's run failed: {result['error']}")
        return result

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> SuperLink:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def start_supernode(server: str, profile: str | os.PathLike, home: str | os.PathLike,
                    local_epochs: int = 1, audit: str | os.PathLike | None = None,
                    log: str | os.PathLike | None = None,
                    session: bool = True) -> subprocess.Popen:
    """flower-supernode for one profile, connected to the SuperLink's Fleet API.
    session: in its own process session (False: it shares the caller's, so a signal to
    the caller's process group reaches it too)."""
    split_address(server)
    home = Path(home)
    home.mkdir(parents=True, exist_ok=True)
    node_config = f'profile="{Path(profile).resolve()}" local-epochs={int(local_epochs)}'
    if audit:
        node_config += f' audit="{Path(audit).resolve()}"'
    cmd = [_tool("flower-supernode"), "--insecure", "--superlink", server,
           "--node-config", node_config, "--port", str(free_port())]
    out = open(log, "ab") if log else subprocess.DEVNULL
    try:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=_env(home),
                                start_new_session=session)
    finally:
        if log:
            out.close()
