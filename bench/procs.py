"""Processes the benchmark starts: the simulator, servers under test, the real exporter CLI."""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
API_KEY = "bench-key"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["LETTA_API_KEY"] = API_KEY
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def memory_of(pid: int) -> dict[str, int]:
    """VmHWM (peak RSS) and VmRSS of a process, in bytes."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmHWM", "VmRSS"):
            values[key] = int(rest.split()[0]) * 1024
    return values


def reset_peak(pid: int) -> bool:
    """Reset VmHWM to the current RSS (Linux `clear_refs` 5); False when not allowed."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


class Simulator:
    """`letta-environments-simulator` in its own process, with a fixed (no churn) fleet."""

    def __init__(self, fleet_size: int, page_size: int) -> None:
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "letta_simulator",
                "--web.listen-address=127.0.0.1:0",
                f"--fleet-size={fleet_size}",
                f"--max-page-size={page_size}",
                "--no-churn",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,  # a scraper hanging up mid-page is routine here
            text=True,
            env=_env(),
            cwd=ROOT,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        found = re.search(r"(http://\S+)", line)
        if not found:
            self.close()
            raise RuntimeError(f"the simulator did not start: {line!r}")
        self.url = found.group(1)

    def latency(self, millis: float) -> None:
        if millis:
            httpx.post(
                f"{self.url}/_simulator/faults", json={"latency_ms": millis}
            ).raise_for_status()
        else:
            httpx.delete(f"{self.url}/_simulator/faults").raise_for_status()

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)
        if self.process.stdout is not None:
            self.process.stdout.close()


class Target:
    """A `bench.target` process: one JSON line per command."""

    def __init__(self, kind: str, *args: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.target", kind, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=_env(),
            cwd=ROOT,
        )
        hello = self._read()
        self.port = int(hello["port"])

    def _read(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            code = self.process.wait(timeout=30)
            raise RuntimeError(f"bench.target exited with {code}")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def command(self, name: str) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(name + "\n")
        self.process.stdin.flush()
        return self._read()

    def memory(self) -> dict[str, int]:
        return memory_of(self.process.pid)

    def close(self) -> None:
        assert self.process.stdin is not None and self.process.stdout is not None
        if self.process.poll() is None:
            try:
                self.process.stdin.write("quit\n")
                self.process.stdin.flush()
                self.process.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self.process.kill()
                self.process.wait()
        for stream in (self.process.stdin, self.process.stdout):
            with contextlib.suppress(OSError):  # a broken pipe from a process already gone
                stream.close()


class ExporterCLI:
    """The real `letta-environments-exporter` (`python -m exporter`) against the simulator."""

    def __init__(self, base_url: str, poll_interval: str, page_size: int, *flags: str) -> None:
        self.port = free_port()
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 (closed in close())
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "exporter",
                f"--web.listen-address=127.0.0.1:{self.port}",
                f"--letta.base-url={base_url}",
                f"--letta.page-size={page_size}",
                f"--letta.poll-interval={poll_interval}",
                "--letta.poll-jitter=10ms",
                "--no-version.registry",
                "--no-version.pypi",
                "--log.level=warn",
                *flags,
            ],
            stderr=self._log,
            env=_env(),
            cwd=ROOT,
        )
        self.url = f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        """The last lines the exporter logged (warnings and errors)."""
        self._log.seek(0)
        return "\n".join(self._log.read().decode(errors="replace").splitlines()[-5:])

    def successful_polls(self) -> int:
        text = httpx.get(f"{self.url}/metrics", timeout=60).text
        found = re.search(r'^letta_exporter_polls_total\{result="success"\} (\S+)$', text, re.M)
        return int(float(found.group(1))) if found else 0

    def wait_for_polls(self, count: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"the exporter exited with {self.process.returncode}: {self.log()}"
                )
            try:
                if self.successful_polls() >= count:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(
            f"the exporter did not complete {count} polls in {timeout:.0f}s: {self.log()}"
        )

    def memory(self) -> dict[str, int]:
        return memory_of(self.process.pid)

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._log.close()
