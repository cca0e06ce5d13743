"""Starting the real `embedkit serve` as a subprocess for the server tests: a free port, the session's embedded
PostgreSQL (same EMBEDKIT_HOME), waiting for /health, and stopping it at the end. Also reading /metrics."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_env(pg_home: Path, models_dir: Path) -> dict[str, str]:
    """The environment of CLI and server subprocesses: the test's EMBEDKIT_HOME and models, this checkout."""
    env = dict(os.environ)
    env.update(EMBEDKIT_HOME=str(pg_home), EMBEDKIT_MODELS=str(models_dir),
               PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""))
    env.pop("EMBEDKIT_DATABASE_URL", None)
    env.pop("EMBEDKIT_API_KEY", None)
    return env


@dataclass
class RunningServer:
    url: str
    key: str | None
    proc: subprocess.Popen
    log: Path
    health_before_ready: list[tuple[int, dict]]  # /health answers seen while waiting for 200

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"} if self.key else {}

    def client(self, **kw) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=self.headers, timeout=kw.pop("timeout", 300), **kw)

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")


def start_server(env: dict[str, str], log: Path, *args: str, key: str | None = None,
                 timeout: float = 600, cwd: Path = REPO) -> RunningServer:
    """Start `embedkit serve ARGS` in `cwd` (the folder its paths are shown relative to) on a free port and wait
    until /health answers 200."""
    port = free_port()
    cmd = [sys.executable, "-m", "embedkit.cli.main", "serve", "--port", str(port), *args]
    if key:
        cmd += ["--api-key", key]
    fh = open(log, "w")
    proc = subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, cwd=str(cwd))
    fh.close()
    srv = RunningServer(f"http://127.0.0.1:{port}", key, proc, log, [])
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"embedkit serve exited with {proc.returncode}:\n{srv.stderr()}")
        try:
            r = httpx.get(srv.url + "/health", timeout=5)
            if r.status_code == 200:
                return srv
            srv.health_before_ready.append((r.status_code, r.json()))
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    stop_server(srv)
    raise RuntimeError(f"embedkit serve did not become ready in {timeout} s:\n{srv.stderr()}")


def stop_server(srv: RunningServer) -> None:
    """SIGTERM, then SIGKILL after 30 s."""
    if srv.proc.poll() is None:
        srv.proc.terminate()
        try:
            srv.proc.wait(30)
        except subprocess.TimeoutExpired:
            srv.proc.kill()
            srv.proc.wait(10)


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$")


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of `name` whose labels include `labels` (0 if none)."""
    total = 0.0
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if not m or m.group(1) != name:
            continue
        got = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        if all(got.get(k) == v for k, v in labels.items()):
            total += float(m.group(3))
    return total
