"""The release artifacts: what `python -m build` makes, what twine says of it, and the wheel
installed by pip into a fresh virtualenv, run as a user would run it."""

from __future__ import annotations

import email.parser
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from exporter import __version__
from letta_simulator import SimulatorHTTPServer
from tests.artifacts import Artifacts, outside_environment, source_files
from tests.conftest import API_KEY, LOOKED_UP, ROOT

pytestmark = pytest.mark.slow

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
VERSION = PYPROJECT["project"]["version"]
EXPORTER = "letta-environments-exporter"


def sdist_members(artifacts: Artifacts) -> list[str]:
    """The sdist's files, relative to its top directory."""
    with tarfile.open(artifacts.sdist) as sdist:
        names = [m.name for m in sdist.getmembers() if m.isfile()]
    return [name.split("/", 1)[1] for name in names]


def wheel_members(artifacts: Artifacts) -> list[str]:
    with zipfile.ZipFile(artifacts.wheel) as wheel:
        return wheel.namelist()


def wheel_packages() -> set[str]:
    """The top-level packages pyproject.toml puts in the wheel."""
    patterns = PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    return {pattern.rstrip("*").rstrip(".") for pattern in patterns}


def run_installed(
    artifacts: Artifacts, *args: str, cwd: Path, **env: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(artifacts.script(EXPORTER)), *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        cwd=cwd,
        env=outside_environment(**env),
    )


# -- what the build makes ---------------------------------------------------------------------


def test_twine_check_passes_on_the_wheel_and_the_sdist(artifacts: Artifacts) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "twine",
            "check",
            "--strict",
            str(artifacts.wheel),
            str(artifacts.sdist),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("PASSED") == 2, result.stdout


def test_the_sdist_holds_every_file_of_the_repository(artifacts: Artifacts) -> None:
    """What rebuilding the tests, the docs and the bundle needs: all of it."""
    members = set(sdist_members(artifacts))
    missing = [path for path in source_files() if path not in members]
    assert not missing, f"the sdist lacks files of the repository (see MANIFEST.in): {missing}"
    for expected in ("tests/conftest.py", "docs/metrics.md", "Makefile", "MANIFEST.in"):
        assert expected in members
    junk = [m for m in members if "__pycache__" in m or m.endswith(".pyc") or m.startswith(".venv")]
    assert not junk, f"the sdist carries build junk: {junk[:10]}"


def test_the_unpacked_sdist_rebuilds_and_tests_itself(artifacts: Artifacts, tmp_path: Path) -> None:
    """Its tests collect, its golden test passes, its monitoring bundle (rules, dashboards,
    mixin) regenerates to its own files."""
    with tarfile.open(artifacts.sdist) as sdist:
        sdist.extractall(tmp_path, filter="data")
    (tree,) = tmp_path.iterdir()
    steps = [
        ["-m", "pytest", "-q", "-p", "no:cacheprovider", "--collect-only"],
        ["-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_golden.py"],
        ["alerts/generate.py", "--check"],
        ["-c", "import exporter; print(exporter.__file__)"],
    ]
    results = [
        subprocess.run(
            [sys.executable, *step], cwd=tree, capture_output=True, text=True, check=False
        )
        for step in steps
    ]
    for step, result in zip(steps, results, strict=True):
        assert result.returncode == 0, f"{step} in the sdist:\n{result.stdout}\n{result.stderr}"
    assert " collected" in results[0].stdout
    assert Path(results[-1].stdout.strip()).is_relative_to(tree), "the sdist's own package ran"


def test_the_wheel_holds_only_the_packages(artifacts: Artifacts) -> None:
    members = wheel_members(artifacts)
    dist_info = f"letta_environments_exporter-{VERSION}.dist-info"
    tops = {name.split("/", 1)[0] for name in members}
    assert tops == {*wheel_packages(), dist_info}, sorted(tops)
    for package in wheel_packages():
        sources = {p.relative_to(ROOT).as_posix() for p in (ROOT / package).rglob("*.py")}
        missing = sorted(sources - set(members))
        assert not missing, f"the wheel lacks package modules: {missing}"
    assert not [m for m in members if m.endswith(".pyc")]


def test_the_wheel_declares_the_projects_metadata(artifacts: Artifacts) -> None:
    with zipfile.ZipFile(artifacts.wheel) as wheel:
        metadata = wheel.read(f"letta_environments_exporter-{VERSION}.dist-info/METADATA")
        entry_points = wheel.read(
            f"letta_environments_exporter-{VERSION}.dist-info/entry_points.txt"
        ).decode()
    message = email.parser.BytesParser().parsebytes(metadata)
    assert message["Name"] == PYPROJECT["project"]["name"]
    assert message["Version"] == VERSION
    assert message["Requires-Python"] == PYPROJECT["project"]["requires-python"]
    assert message["Description-Content-Type"] == "text/markdown"
    required = [Requirement(line) for line in message.get_all("Requires-Dist")]
    unconditional = {str(r) for r in required if r.marker is None}
    declared = {str(Requirement(d)) for d in PYPROJECT["project"]["dependencies"]}
    assert unconditional == declared
    for script, target in PYPROJECT["project"]["scripts"].items():
        assert f"{script} = {target}" in entry_points


# -- one version, everywhere ------------------------------------------------------------------


def test_the_version_comes_from_pyproject_alone(artifacts: Artifacts, tmp_path: Path) -> None:
    assert __version__ == VERSION
    assert artifacts.wheel.name.startswith(f"letta_environments_exporter-{VERSION}-")
    assert artifacts.sdist.name == f"letta_environments_exporter-{VERSION}.tar.gz"
    result = run_installed(artifacts, "--version", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [EXPORTER, VERSION]


# -- the wheel, installed in a fresh virtualenv -----------------------------------------------


def test_the_install_runs_from_its_own_virtualenv(artifacts: Artifacts, tmp_path: Path) -> None:
    """Not from this checkout, not with this virtualenv's packages."""
    config = (artifacts.venv / "pyvenv.cfg").read_text()
    assert "include-system-site-packages = false" in config
    result = subprocess.run(
        [str(artifacts.venv / "bin" / "python"), "-c", "import exporter; print(exporter.__file__)"],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
        env=outside_environment(),
    )
    module = Path(result.stdout.strip())
    assert module.is_relative_to(artifacts.venv), module
    assert not module.is_relative_to(ROOT), module


def test_help_lists_the_flags(artifacts: Artifacts, tmp_path: Path) -> None:
    result = run_installed(artifacts, "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for flag in ("--config.file", "--letta.api-key-file", "--web.listen-address", "--once"):
        assert flag in result.stdout


def test_once_polls_the_simulator_and_prints_the_exposition(
    artifacts: Artifacts, simulator: SimulatorHTTPServer, tmp_path: Path
) -> None:
    result = run_installed(
        artifacts,
        "--once",
        f"--version.registry-url={simulator.url}/_registry",
        f"--version.pypi-url={simulator.url}/_pypi",
        cwd=tmp_path,
        LETTA_API_KEY=API_KEY,
        LETTA_BASE_URL=simulator.url,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    fleet = [line for line in lines if line.startswith("letta_environments{")]
    assert sum(float(line.rsplit(" ", 1)[1]) for line in fleet) == 60, fleet
    assert 'letta_exporter_polls_total{result="success"} 1.0' in lines
    assert f'letta_exporter_build_info{{version="{VERSION}"}} 1.0' in lines
    for registry in ("npm", "pypi"):
        assert LOOKED_UP.format(registry) in lines
