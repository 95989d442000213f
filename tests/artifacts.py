"""The release artifacts as a user gets them: built by `python -m build`, installed by pip into a
fresh virtualenv that knows nothing of this checkout."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import ROOT

# Where the systemd unit runs the exporter from (the README's venv install), under a stand-in root.
UNIT_VENV = "/opt/letta-environments-exporter"


@dataclass(frozen=True)
class Artifacts:
    """The built wheel and sdist, and the wheel installed at `root` + `UNIT_VENV`."""

    wheel: Path
    sdist: Path
    root: Path

    @property
    def venv(self) -> Path:
        return self.root / UNIT_VENV.lstrip("/")

    def script(self, name: str) -> Path:
        return self.venv / "bin" / name


def outside_environment(**extra: str) -> dict[str, str]:
    """An environment with nothing of the development virtualenv or this checkout in it."""
    drop = ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "LETTA_API_KEY", "LETTA_BASE_URL")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    venv_bin = str(Path(sys.prefix) / "bin")
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p != venv_bin)
    return {**env, **extra}


def _run(
    argv: list[str | Path], what: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> None:
    result = subprocess.run(
        [str(a) for a in argv],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
        env=env,
        cwd=cwd,
    )
    assert result.returncode == 0, f"{what} failed:\n{result.stdout}\n{result.stderr}"


def source_files() -> list[str]:
    """What a clean clone of this work tree holds: tracked files and new ones git would add."""
    result = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return sorted(path for path in result.stdout.splitlines() if (ROOT / path).is_file())


def build_artifacts(work: Path) -> Artifacts:
    """`python -m build` (the sdist, then the wheel from the unpacked sdist), then a fresh venv.

    It builds from a copy of the source files: setuptools would otherwise add whatever a stale
    `*.egg-info/SOURCES.txt` of the work tree lists, hiding a file MANIFEST.in no longer takes.
    """
    source, dist = work / "source", work / "dist"
    for path in source_files():
        (source / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / path, source / path)
    _run([sys.executable, "-m", "build", "--outdir", dist, source], "python -m build")
    wheels, sdists = sorted(dist.glob("*.whl")), sorted(dist.glob("*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1, f"python -m build made {os.listdir(dist)}"
    artifacts = Artifacts(wheel=wheels[0], sdist=sdists[0], root=work / "root")
    env = outside_environment()
    # venv bases the new environment on the Python behind this virtualenv, not on this one.
    _run([sys.executable, "-m", "venv", artifacts.venv], "python -m venv", env=env)
    pip = [artifacts.venv / "bin" / "python", "-m", "pip", "install", "--quiet"]
    _run([*pip, artifacts.wheel], "pip install of the wheel", env=env, cwd=work)
    return artifacts
