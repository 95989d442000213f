"""Shared fixtures: real servers on loopback, real tools, no mocks where the real thing runs."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from prometheus_client import disable_created_metrics
from pydantic import SecretStr

from exporter.client import ClientSettings
from exporter.config import Config
from exporter.rendering import RenderOptions
from letta_simulator import SimulatorHTTPServer, start_simulator

if TYPE_CHECKING:
    from tests.artifacts import Artifacts

ROOT = Path(__file__).resolve().parent.parent
API_KEY = "test-key-0123456789"
# An exposition line that says both registries answered the one lookup so far.
LOOKED_UP = 'letta_exporter_release_lookups_total{{registry="{}",result="success"}} 1.0'
TIME_TO_KNOW: list[str] = []  # what the end-to-end alerting test measured, for the summary
MEASURED: list[str] = []  # other figures a test measured, for the summary


def pytest_configure(config: Any) -> None:
    # In-process exporters serve their own metrics as the command line sets them up.
    disable_created_metrics()  # type: ignore[no-untyped-call]


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for line in TIME_TO_KNOW:
        terminalreporter.write_line(f"time to know: {line}")
    for line in MEASURED:
        terminalreporter.write_line(line)


def require_tool(name: str, *alternatives: str) -> str:
    """The path of a tool the test command installs; a missing one fails, never skips."""
    for candidate in (name, *alternatives):
        path = shutil.which(candidate)
        if path:
            return path
    pytest.fail(
        f"{name} is not installed: run the README's test command (make test), "
        "which installs it from Debian's packages"
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_config(**overrides: Any) -> Config:
    base = {"api_key": SecretStr(API_KEY), "base_url": "http://upstream.test", "poll_jitter": 0.0}
    return Config(**{**base, **overrides})


def client_settings(**overrides: Any) -> ClientSettings:
    """What the client reads of a test configuration (`make_config` names the overrides)."""
    return make_config(**overrides).client_settings()


def render_options(**overrides: Any) -> RenderOptions:
    """What rendering reads of a test configuration (`make_config` names the overrides)."""
    return make_config(**overrides).render_options()


@pytest.fixture
def simulator() -> Iterator[SimulatorHTTPServer]:
    server = start_simulator(fleet_size=60, seed=3, api_key=API_KEY, churn=False)
    try:
        yield server
    finally:
        server.close()


def wait_until(predicate: Any, timeout: float, what: str, interval: float = 0.1) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except (httpx.HTTPError, OSError) as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def stop_process(process: subprocess.Popen[Any]) -> None:
    """SIGTERM, then SIGKILL if it has not exited within 10 s."""
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class ExporterProcess:
    """A running `python -m exporter` and the file its log goes to."""

    def __init__(self, url: str, process: subprocess.Popen[bytes], log_path: Path) -> None:
        self.url = url
        self.process = process
        self.log_path = log_path

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")


@contextmanager
def exporter_process(
    *args: str,
    env: dict[str, str] | None = None,
    ready: bool = True,
    listen: str = "127.0.0.1:{port}",
) -> Iterator[ExporterProcess]:
    """Run the real CLI (`python -m exporter`) on a free port, listening at ``listen`` (which
    must include loopback); ``.url`` is on 127.0.0.1."""
    port = free_port()
    full_env = {**os.environ, "LETTA_API_KEY": API_KEY, **(env or {})}
    if not any(arg.startswith(("--version.", "--no-version.", "--demo")) for arg in args):
        # The test suite never reaches the internet.
        args = ("--no-version.registry", "--no-version.pypi", *args)
    log_dir = Path(tempfile.mkdtemp(prefix="letta-exporter-log-"))
    log_path = log_dir / "exporter.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "exporter",
                f"--web.listen-address={listen.format(port=port)}",
                *args,
            ],
            env=full_env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
    running = ExporterProcess(f"http://127.0.0.1:{port}", process, log_path)
    try:
        path = "/-/ready" if ready else "/-/healthy"
        wait_until(
            lambda: httpx.get(running.url + path, timeout=1).status_code == 200,
            20,
            f"the exporter's {path} (log: {log_path})",
        )
        yield running
    finally:
        stop_process(process)
        shutil.rmtree(log_dir, ignore_errors=True)


@pytest.fixture
def workdir() -> Iterator[Path]:
    """A folder of the test's own for servers' files, removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="letta-test-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Artifacts:
    """The wheel and sdist `python -m build` makes, the wheel installed in a fresh virtualenv."""
    from tests.artifacts import build_artifacts

    return build_artifacts(tmp_path_factory.mktemp("artifacts"))
