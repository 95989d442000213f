"""Real Letta Code clients for the tests: pinned releases from PyPI, run as listeners.

PyPI's `letta` package is Letta Code with its own Node. Each pinned release is installed once
into a virtualenv of its own under `.cache/letta-code/` (git-ignored) and reused by later runs.
A listener runs as `letta server --env-name NAME` with a `HOME` of its own, where Letta Code
keeps its settings, its device id and a lock file named after the listener.
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import venv
from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import ROOT, stop_process

CURRENT = "0.34.12"  # the newest release on PyPI, which reports `metadata.machine`
OLDER = "0.33.8"  # the newest release without `metadata.machine`
CACHE = ROOT / ".cache" / "letta-code"


def install(version: str) -> Path:
    """The `letta` command of that release, installed into the cache on first use."""
    home = CACHE / version
    command = home / "bin" / "letta"
    done = home / ".installed"
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f".{version}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two test processes install one release once
        if not done.exists():
            venv.EnvBuilder(clear=True, with_pip=True).create(home)
            result = subprocess.run(
                [home / "bin" / "python", "-m", "pip", "install", "--quiet", f"letta=={version}"],
                capture_output=True,
                text=True,
                timeout=900,
                check=False,
            )
            if result.returncode != 0:
                raise RuntimeError(f"pip install letta=={version} failed:\n{result.stderr}")
            done.write_text(version)
    return command


def node_version(command: Path) -> str:
    """What `process.version` says in the Node that release carries."""
    package = next((command.parent.parent / "lib").glob("python*/site-packages/letta_code"))
    node = package / "_payload" / "bin" / "node"
    return subprocess.run([node, "--version"], capture_output=True, text=True, check=True).stdout


@dataclass
class Listener:
    """One `letta server` process, its `HOME` and its output; restartable under the same name."""

    command: Path
    name: str
    base_url: str
    api_key: str
    home: Path
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0
    logs: list[Path] = field(default_factory=list)

    def start(self) -> None:
        assert self.process is None or self.process.poll() is not None, "already running"
        log_path = self.home / f"listener-{self.starts}.log"
        self.logs.append(log_path)
        self.starts += 1
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("LETTA_", "VIRTUAL_ENV", "PYTHON"))
        }
        env.update(
            HOME=str(self.home),
            LETTA_API_KEY=self.api_key,
            LETTA_BASE_URL=self.base_url,
            # The listener refuses a server that is not Letta Cloud without this.
            IGNORE_SELF_HOSTED_LISTENER_ERROR="1",
            DISABLE_AUTOUPDATER="1",
            PATH=os.pathsep.join(
                p
                for p in env.get("PATH", "").split(os.pathsep)
                if p != str(Path(sys.prefix) / "bin")
            ),
        )
        with open(log_path, "wb") as log_file:
            self.process = subprocess.Popen(
                [str(self.command), "server", "--env-name", self.name],
                env=env,
                cwd=self.home,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )

    def signal(self, signum: signal.Signals) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def kill(self) -> None:
        """SIGKILL, and reap it: a zombie's pid in the lock file would block a restart."""
        assert self.process is not None
        self.process.kill()
        self.process.wait(timeout=30)

    def stop(self) -> None:
        """Whatever state it is in (frozen included), end it and reap it."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGCONT)
        stop_process(self.process)

    def output(self) -> str:
        return "\n".join(p.read_text(encoding="utf-8", errors="replace") for p in self.logs)
