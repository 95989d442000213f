"""The Dockerfile, read and its steps run without a container engine (test_container_image.py
builds and runs the image with podman).

hadolint lints the Dockerfile; the builder's and the runtime stage's own commands run against a
copy of the build context and a fresh virtualenv; the HEALTHCHECK's command runs against live
exporters at several addresses, with TLS and basic auth, a closed port and a failing server.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tomllib
import venv
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from threading import Thread
from typing import Any

import bcrypt
import httpx
import pytest

from exporter import __version__
from exporter.config import DEFAULT_PORT
from tests.certs import make_pki
from tests.conftest import (
    ROOT,
    exporter_process,
    free_port,
    require_tool,
    stop_process,
    wait_until,
)

DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
BASE_IMAGE = re.compile(
    r"^docker\.io/library/python:3\.11\.\d+-slim-bookworm@sha256:(?P<digest>[0-9a-f]{64})$"
)


@dataclass(frozen=True)
class Instruction:
    keyword: str
    arguments: str


def parse_dockerfile(text: str) -> list[list[Instruction]]:
    """Instructions grouped by stage, continuation lines joined, comments dropped; the first
    group holds what comes before the first FROM (the global ARGs)."""
    stages: list[list[Instruction]] = [[]]
    logical = ""
    for line in text.splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        if line.endswith("\\"):
            logical += line[:-1] + " "
            continue
        logical += line
        keyword, _, arguments = logical.strip().partition(" ")
        logical = ""
        if keyword.upper() == "FROM":
            stages.append([])
        stages[-1].append(Instruction(keyword.upper(), " ".join(arguments.split())))
    return stages


GLOBAL, *STAGES = parse_dockerfile(DOCKERFILE.read_text())
BUILDER, RUNTIME = STAGES if len(STAGES) == 2 else (None, None)


def stage(which: list[Instruction] | None) -> list[Instruction]:
    assert which is not None, f"the Dockerfile has {len(STAGES)} stages, expected builder+runtime"
    return which


def only(instructions: list[Instruction], keyword: str) -> Instruction:
    found = [i for i in instructions if i.keyword == keyword]
    assert len(found) == 1, f"expected one {keyword}, found {found}"
    return found[0]


def hadolint() -> str:
    beside_python = Path(sys.executable).parent / "hadolint"
    if beside_python.is_file():
        return str(beside_python)
    return require_tool("hadolint")


def dockerignore_excludes(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    parts = path.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for raw in patterns:
        negated = raw.startswith("!")
        pattern = raw.lstrip("!").strip("/")
        regex = re.escape(pattern)
        regex = regex.replace(r"\*\*/", "(?:.*/)?").replace(r"\*\*", ".*")
        regex = regex.replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        if any(re.fullmatch(regex, candidate) for candidate in candidates):
            excluded = not negated
    return excluded


def dockerignore_patterns() -> list[str]:
    lines = DOCKERIGNORE.read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def build_context_files() -> list[str]:
    """Every file of the work tree the build context admits (paths relative to the root)."""
    patterns = dockerignore_patterns()
    files: list[str] = []
    for dirpath, dirnames, filenames in os.walk(ROOT):
        relative_dir = Path(dirpath).relative_to(ROOT).as_posix()
        dirnames[:] = [d for d in dirnames if d not in (".git", ".venv", ".cache")]
        for name in filenames:
            path = name if relative_dir == "." else f"{relative_dir}/{name}"
            if not dockerignore_excludes(path, patterns):
                files.append(path)
    return sorted(files)


def clean_pip_environment() -> dict[str, str]:
    """The environment of a pip with no configuration, as in the image: no extra indexes."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull
    env.pop("VIRTUAL_ENV", None)
    return env


# -- hadolint --------------------------------------------------------------------------------


def test_hadolint_finds_nothing_at_any_level() -> None:
    result = subprocess.run(
        [hadolint(), "--no-color", "--failure-threshold", "info", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "", f"hadolint findings:\n{result.stdout}"


def test_hadolint_fails_a_dockerfile_with_known_faults(tmp_path: Path) -> None:
    """A control: the same invocation does fail on an unpinned base and an unpinned pip install."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN pip install requests\n")
    result = subprocess.run(
        [hadolint(), "--no-color", "--failure-threshold", "info", str(bad)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0
    assert "DL3006" in result.stdout
    assert "DL3013" in result.stdout


# -- what the Dockerfile says ----------------------------------------------------------------


def test_both_stages_use_one_python_base_pinned_by_tag_and_digest() -> None:
    """The base is a build argument (a stand-in where Docker Hub cannot be reached) whose
    default is the pinned image; both stages use it, and the label names the one used."""
    (argument,) = [i.arguments for i in GLOBAL if i.keyword == "ARG"]
    name, _, default = argument.partition("=")
    assert name == "PYTHON_IMAGE"
    assert BASE_IMAGE.match(default), f"not python:3.11.N-slim-bookworm@sha256:...: {default}"
    bases = [only(s, "FROM").arguments for s in (stage(BUILDER), stage(RUNTIME))]
    assert bases == ["${PYTHON_IMAGE} AS builder", "${PYTHON_IMAGE}"]
    assert "PYTHON_IMAGE" in [i.arguments for i in stage(RUNTIME) if i.keyword == "ARG"]
    labels = only(stage(RUNTIME), "LABEL").arguments
    assert 'base.name="${PYTHON_IMAGE}"' in labels


def test_runtime_runs_the_console_script_as_a_numeric_non_root_user_on_the_default_port() -> None:
    runtime = stage(RUNTIME)
    user = only(runtime, "USER").arguments
    assert re.fullmatch(r"[1-9]\d*:[1-9]\d*", user), f"USER must be numeric uid:gid, got {user}"
    assert only(runtime, "EXPOSE").arguments == str(DEFAULT_PORT)
    entrypoint = json.loads(only(runtime, "ENTRYPOINT").arguments)
    assert entrypoint == ["letta-environments-exporter"]
    assert entrypoint[0] in PYPROJECT["project"]["scripts"]
    uid = user.split(":")[0]
    run = only(runtime, "RUN").arguments
    assert f"--uid {uid}" in run, "the user the image runs as is created in the RUN step"


def test_oci_labels_describe_the_project() -> None:
    labels = dict(
        re.findall(
            r'(org\.opencontainers\.image\.[\w.]+)="([^"]*)"',
            only(stage(RUNTIME), "LABEL").arguments,
        )
    )
    for key in ("title", "description", "licenses", "version", "revision", "created"):
        assert f"org.opencontainers.image.{key}" in labels, f"missing OCI label {key}"
    assert labels["org.opencontainers.image.title"] == PYPROJECT["project"]["name"]
    assert labels["org.opencontainers.image.licenses"] == PYPROJECT["project"]["license"]
    args = [i.arguments for i in stage(RUNTIME) if i.keyword == "ARG"]
    assert f"VERSION={PYPROJECT['project']['version']}" in args, "bump ARG VERSION with the project"
    assert PYPROJECT["project"]["version"] == __version__


def test_dockerignore_admits_what_the_builder_copies_and_nothing_else() -> None:
    admitted = build_context_files()
    copied = [
        src
        for instruction in stage(BUILDER)
        if instruction.keyword == "COPY"
        for src in instruction.arguments.split(" ")[:-1]
    ]
    assert copied, "the builder copies nothing"
    for src in copied:
        source = ROOT / src
        assert source.exists(), f"COPY {src}: no such path in the repository"
        wanted = (
            [p.relative_to(ROOT).as_posix() for p in source.rglob("*.py")]
            if source.is_dir()
            else [src]
        )
        missing = [w for w in wanted if w not in admitted]
        assert not missing, f".dockerignore excludes files the builder copies: {missing}"
    stray = [p for p in admitted if not any(p == c or p.startswith(c) for c in copied)]
    assert not stray, f"the build context holds files no stage copies: {stray}"
    patterns = dockerignore_patterns()
    for unwanted in (".git/HEAD", ".venv/bin/python", "exporter/__pycache__/cli.cpython-311.pyc"):
        assert dockerignore_excludes(unwanted, patterns), f"{unwanted} reaches the build context"


# -- the stages' commands, run here -----------------------------------------------------------


@pytest.fixture(scope="module")
def installed_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv set up by the Dockerfile's own builder and runtime commands."""
    work = tmp_path_factory.mktemp("image")
    context, wheels, target = work / "src", work / "wheels", work / "venv"

    # The builder stage: its COPY lines on the admitted files, then its RUN.
    admitted = set(build_context_files())
    for instruction in stage(BUILDER):
        if instruction.keyword == "COPY":
            *sources, destination = instruction.arguments.split(" ")
            for src in sources:
                source = ROOT / src
                dest = context / destination if destination != "./" else context
                if source.is_dir():
                    for path in source.rglob("*"):
                        relative = path.relative_to(ROOT).as_posix()
                        if path.is_file() and relative in admitted:
                            copy_to = dest / path.relative_to(source)
                            copy_to.parent.mkdir(parents=True, exist_ok=True)
                            shutil.copy2(path, copy_to)
                else:
                    dest.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(source, dest / source.name)
    builder_run = only(stage(BUILDER), "RUN").arguments
    assert builder_run.startswith("pip wheel "), builder_run
    command = builder_run.replace("/wheels", str(wheels)).replace("pip ", "", 1)
    result = subprocess.run(
        [sys.executable, "-m", "pip", *shlex.split(command)],
        cwd=context,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, f"builder's RUN failed:\n{result.stdout}\n{result.stderr}"

    # The runtime stage: its RUN's pip install into a fresh venv (the user steps need root).
    venv.EnvBuilder(with_pip=False, clear=True).create(target)
    runtime_run = only(stage(RUNTIME), "RUN").arguments
    mount, _, steps = runtime_run.partition(" ")
    assert mount == "--mount=type=bind,from=builder,source=/wheels,target=/wheels", mount
    commands = [step.strip() for step in steps.split("&&")]
    installs = [c for c in commands if c.startswith("pip install ")]
    others = [c.split(" ")[0] for c in commands if c not in installs]
    assert len(installs) == 1 and others == ["groupadd", "useradd"], commands
    # What the image's shell does with the line: split it, expand the wheel's glob.
    argv = shlex.split(installs[0].replace("/wheels", str(wheels)))
    expanded: list[str] = []
    for arg in argv:
        matches = sorted(glob.glob(arg)) if "*" in arg else [arg]
        assert matches, f"{arg} matches no file in the builder's wheels"
        expanded.extend(matches)
    # This pip installs into the venv (--python), sparing the venv a slow ensurepip.
    pip = [sys.executable, "-m", "pip", "--python", str(target / "bin" / "python")]
    result = subprocess.run(
        [*pip, *expanded[1:]],
        capture_output=True,
        text=True,
        check=False,
        env=clean_pip_environment(),
    )
    assert result.returncode == 0, (
        f"runtime's pip install failed:\n{result.stdout}\n{result.stderr}"
    )
    return target


def test_runtime_install_gives_a_working_entrypoint(installed_venv: Path) -> None:
    result = subprocess.run(
        [str(installed_venv / "bin" / "letta-environments-exporter"), "--help"],
        capture_output=True,
        text=True,
        check=False,
        env=clean_pip_environment(),
    )
    assert result.returncode == 0, result.stderr
    assert "--web.listen-address" in result.stdout


def test_runtime_install_gives_the_simulator_the_compose_stack_runs(installed_venv: Path) -> None:
    result = subprocess.run(
        [str(installed_venv / "bin" / "letta-environments-simulator"), "--help"],
        capture_output=True,
        text=True,
        check=False,
        env=clean_pip_environment(),
    )
    assert result.returncode == 0, result.stderr
    assert "--fleet-size" in result.stdout


def test_runtime_install_is_the_project_at_its_version(installed_venv: Path) -> None:
    result = subprocess.run(
        [str(installed_venv / "bin" / "letta-environments-exporter"), "--version"],
        capture_output=True,
        text=True,
        check=False,
        env=clean_pip_environment(),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["letta-environments-exporter", __version__]


# -- the HEALTHCHECK ------------------------------------------------------------------------------


def test_the_healthcheck_is_the_exporters_own() -> None:
    arguments = only(stage(RUNTIME), "HEALTHCHECK").arguments
    _, _, exec_form = arguments.partition(" CMD ")
    assert json.loads(exec_form) == ["python", "-m", "exporter.healthcheck"]


def run_healthcheck(pid: int) -> subprocess.CompletedProcess[str]:
    """The HEALTHCHECK's command, aimed at the exporter process ``pid``."""
    return subprocess.run(
        [sys.executable, "-m", "exporter.healthcheck", str(pid)],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
        cwd=ROOT,
    )


@pytest.mark.parametrize("listen", ["127.0.0.1:{port}", "localhost:{port}", ":{port}"])
def test_healthcheck_follows_the_exporters_listen_address(listen: str) -> None:
    with exporter_process("--demo", ready=False, listen=listen) as running:
        result = run_healthcheck(running.process.pid)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("clients", ["any client", "client certificates required"])
def test_healthcheck_follows_tls_and_basic_auth(tmp_path: Path, clients: str) -> None:
    """The address and the web configuration in a config file, not in flags, with a relative
    path from the exporter's working directory; a frozen exporter is not healthy."""
    from exporter.healthcheck import check

    pki = make_pki(tmp_path / "pki")
    hashed = bcrypt.hashpw(b"secret", bcrypt.gensalt(rounds=4)).decode()
    tls = f"  cert_file: {pki.server_cert}\n  key_file: {pki.server_key}\n"
    if clients != "any client":
        tls += f"  client_ca_file: {pki.ca}\n  client_auth_type: RequireAndVerifyClientCert\n"
    (tmp_path / "web.yml").write_text(
        f"tls_server_config:\n{tls}basic_auth_users:\n  prometheus: '{hashed}'\n"
    )
    port = free_port()
    (tmp_path / "config.yml").write_text(
        f"web.listen-address: 127.0.0.1:{port}\nweb.config.file: web.yml\n"
    )
    arguments = ["--demo", "--config.file=config.yml"]
    process = subprocess.Popen(
        [sys.executable, "-m", "exporter", *arguments],
        env={**os.environ, "LETTA_API_KEY": "k", "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=tmp_path,
    )
    try:
        client_cert = None if clients == "any client" else "trusted"
        with httpx.Client(verify=pki.client_context(client=client_cert)) as client:
            wait_until(
                lambda: client.get(f"https://127.0.0.1:{port}/-/healthy").status_code == 401,
                20,
                "the exporter to answer over https",
            )
        result = run_healthcheck(process.pid)
        assert result.returncode == 0, result.stderr
        process.send_signal(signal.SIGSTOP)  # it still holds its socket; nothing answers
        try:
            frozen = run_healthcheck(process.pid)
        finally:
            process.send_signal(signal.SIGCONT)
        assert frozen.returncode == 1, frozen.stderr
        stop_process(process)
        problem = check(arguments, {}, cwd=tmp_path)
        assert problem is not None and "Connection refused" in problem
    finally:
        stop_process(process)


def test_healthcheck_fails_against_a_closed_port() -> None:
    from exporter.healthcheck import check

    problem = check([f"--web.listen-address=127.0.0.1:{free_port()}"], {"LETTA_API_KEY": "k"})
    assert problem is not None and "Connection refused" in problem


def test_healthcheck_fails_without_an_exporter_process() -> None:
    result = run_healthcheck(os.getpid())
    assert result.returncode == 1
    assert "no exporter process" in result.stderr


class _Failing(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(503)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def failing_server() -> Iterator[int]:
    server = HTTPServer(("127.0.0.1", 0), _Failing)
    thread = Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_port
    finally:
        server.shutdown()
        server.server_close()


def test_healthcheck_fails_when_the_endpoint_answers_an_error(failing_server: int) -> None:
    from exporter.healthcheck import check

    problem = check([f"--web.listen-address=127.0.0.1:{failing_server}"], {"LETTA_API_KEY": "k"})
    assert problem is not None and "HTTP 503" in problem
