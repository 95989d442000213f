"""The systemd unit, checked by systemd's own tools and run the way systemd runs it.

No systemd runs as PID 1 in CI, so `systemd-analyze` judges the unit offline, and the test runs
the unit's ExecStart= line itself: the virtualenv path under a stand-in root holding a real
install of the wheel, `${CREDENTIALS_DIRECTORY}` a private directory with the key file as
LoadCredential= leaves it, the /etc config file a temporary one, against the simulator.
"""

from __future__ import annotations

import ctypes
import re
import shlex
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import yaml

from letta_simulator import SimulatorHTTPServer
from tests.artifacts import UNIT_VENV, Artifacts
from tests.conftest import (
    API_KEY,
    LOOKED_UP,
    ROOT,
    free_port,
    require_tool,
    stop_process,
    wait_until,
)

UNIT = ROOT / "deploy" / "systemd" / "letta-environments-exporter.service"
EXAMPLE_CONFIG = ROOT / "deploy" / "systemd" / "config.yml"
README = " ".join((ROOT / "README.md").read_text().split())
MAX_EXPOSURE = 1.5
# The environment systemd gives a service: its default PATH, no variables of the caller.
SYSTEMD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin"


def parse_unit(text: str) -> dict[str, list[tuple[str, str]]]:
    """Each section's settings in order, continuation lines joined, comments dropped."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    logical = ""
    for line in text.splitlines():
        if not logical and (not line.strip() or line.lstrip().startswith(("#", ";"))):
            continue
        if line.endswith("\\"):
            logical += line[:-1] + " "
            continue
        logical, line = "", logical + line
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), [])
            continue
        key, _, value = line.partition("=")
        current.append((key.strip(), " ".join(value.split())))
    return sections


SERVICE = parse_unit(UNIT.read_text()).get("Service", [])


def setting(key: str) -> list[str]:
    return [value for k, value in SERVICE if k == key]


def one(key: str) -> str:
    values = setting(key)
    assert len(values) == 1, f"expected one {key}= in the unit, found {values}"
    return values[0]


def exec_start() -> list[str]:
    return shlex.split(one("ExecStart"))


def flag(argv: list[str], name: str) -> str:
    values = [arg.split("=", 1)[1] for arg in argv if arg.startswith(f"{name}=")]
    assert len(values) == 1, f"expected one {name}= in ExecStart, found {values}"
    return values[0]


def credential() -> tuple[str, str]:
    """The one LoadCredential= of the unit: its name and the host file it copies."""
    name, _, source = one("LoadCredential").partition(":")
    return name, source


def systemd_analyze() -> str:
    return require_tool("systemd-analyze")


def exposure(unit: Path) -> tuple[float, subprocess.CompletedProcess[str]]:
    """`systemd-analyze security --offline=true`'s overall exposure, failing above the limit."""
    result = subprocess.run(
        [
            systemd_analyze(),
            "security",
            "--offline=true",
            f"--threshold={round(MAX_EXPOSURE * 10)}",  # the tool's 0-100 scale
            "--no-pager",
            str(unit),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+) ", result.stdout)
    assert found, f"no overall exposure in:\n{result.stdout}\n{result.stderr}"
    return float(found.group(1)), result


def installed_copy(artifacts: Artifacts, directory: Path, text: str | None = None) -> Path:
    """The unit with its ExecStart= binary moved under the stand-in root of the real install."""
    binary = exec_start()[0]
    assert binary.startswith(UNIT_VENV + "/"), binary
    rewritten = (text or UNIT.read_text()).replace(
        f"ExecStart={binary} ", f"ExecStart={artifacts.root}{binary} ", 1
    )
    assert rewritten != (text or UNIT.read_text()), "the ExecStart= binary was not rewritten"
    copy = directory / UNIT.name
    copy.write_text(rewritten)
    return copy


def verify(unit: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [systemd_analyze(), "verify", str(unit)],
        capture_output=True,
        text=True,
        check=False,
    )


# -- systemd-analyze ---------------------------------------------------------------------------


def test_systemd_analyze_verify_passes_with_the_binary_installed(
    artifacts: Artifacts, tmp_path: Path
) -> None:
    result = verify(installed_copy(artifacts, tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout + result.stderr == "", "verify warned:\n" + result.stderr


def test_systemd_analyze_verify_fails_a_broken_unit(artifacts: Artifacts, tmp_path: Path) -> None:
    """A control: the same check does catch a missing binary, a bad value and a typo."""
    missing = tmp_path / "missing"
    missing.mkdir()
    (missing / UNIT.name).write_text(UNIT.read_text())
    result = verify(missing / UNIT.name)
    assert result.returncode != 0
    assert "is not executable" in result.stderr
    broken = UNIT.read_text().replace("Restart=on-failure", "Restart=sometimes\nProtectSytem=yes")
    result = verify(installed_copy(artifacts, tmp_path, broken))
    assert "Failed to parse service restart specifier" in result.stderr
    assert "Unknown key 'ProtectSytem'" in result.stderr


def test_exposure_is_at_most_the_limit() -> None:
    level, result = exposure(UNIT)
    assert level <= MAX_EXPOSURE, result.stdout
    assert result.returncode == 0, result.stdout + result.stderr
    assert f": {level} OK" in result.stdout or f": {level} SAFE" in result.stdout
    assert f"`systemd-analyze security` rates it {level}" in README, "README states the figure"


def test_exposure_check_fails_an_unhardened_unit(tmp_path: Path) -> None:
    """A control: the unit with its hardening stripped is judged far above the limit."""
    plain = tmp_path / UNIT.name
    plain.write_text(f"[Service]\nExecStart={one('ExecStart')}\n")
    level, result = exposure(plain)
    assert level > MAX_EXPOSURE
    assert result.returncode != 0


# -- what the unit says ------------------------------------------------------------------------


def test_the_unit_runs_a_dynamic_user_and_restarts_on_failure_but_not_on_bad_config() -> None:
    assert one("DynamicUser") == "yes"
    assert one("Restart") == "on-failure"
    assert one("RestartPreventExitStatus") == "2"  # what the exporter exits with on bad config
    assert one("CapabilityBoundingSet") == ""


def test_the_key_arrives_as_a_credential_and_never_in_the_environment() -> None:
    name, source = credential()
    assert flag(exec_start(), "--letta.api-key-file") == f"${{CREDENTIALS_DIRECTORY}}/{name}"
    assert source.startswith("/etc/"), source
    assert not setting("Environment") and not setting("EnvironmentFile")
    assert "LETTA_API_KEY" not in UNIT.read_text()


def test_the_flags_come_from_a_config_file_in_etc() -> None:
    argv = exec_start()
    assert flag(argv, "--config.file").startswith("/etc/")
    assert [arg.split("=", 1)[0] for arg in argv[1:]] == ["--config.file", "--letta.api-key-file"]


def test_what_the_exporter_needs_stays_allowed() -> None:
    """Outbound HTTPS and one listening socket, /proc/stat for the process metrics, its venv."""
    assert setting("PrivateNetwork") in ([], ["no"])
    assert not setting("IPAddressDeny")
    families = one("RestrictAddressFamilies").split()
    assert {"AF_INET", "AF_INET6"} <= set(families), families
    assert setting("ProcSubset") in ([], ["all"])
    assert one("ProtectHome") == "yes"
    assert not exec_start()[0].startswith(("/home/", "/root/")), "ProtectHome= would hide it"


# -- the ExecStart= line, run ------------------------------------------------------------------


@contextmanager
def credentials_directory(parent: Path) -> Iterator[Path]:
    """The key as LoadCredential= leaves it: a private directory, a file readable by one user."""
    directory = parent / "credentials"
    directory.mkdir()
    name, _ = credential()
    key = directory / name
    key.write_text(API_KEY + "\n")
    key.chmod(0o400)
    directory.chmod(0o500)
    try:
        yield directory
    finally:
        directory.chmod(0o700)


def unit_argv(artifacts: Artifacts, credentials: Path, config: Path) -> list[str]:
    argv = exec_start()
    binary, args = argv[0], argv[1:]
    config_flag = f"--config.file={flag(argv, '--config.file')}"
    args = [f"--config.file={config}" if arg == config_flag else arg for arg in args]
    args = [arg.replace("${CREDENTIALS_DIRECTORY}", str(credentials)) for arg in args]
    assert not [arg for arg in args if "$" in arg], f"unexpanded variables left: {args}"
    return [f"{artifacts.root}{binary}", *args]


def systemd_environment(credentials: Path) -> dict[str, str]:
    return {"PATH": SYSTEMD_PATH, "LANG": "C.UTF-8", "CREDENTIALS_DIRECTORY": str(credentials)}


@dataclass(frozen=True)
class UnitRun:
    """The unit's command line, running; `journal` is its stdout and stderr."""

    process: subprocess.Popen[bytes]
    url: str
    journal: Path


@contextmanager
def running_unit(
    artifacts: Artifacts, simulator: SimulatorHTTPServer, work: Path, wrapper: tuple[str, ...] = ()
) -> Iterator[UnitRun]:
    """The shipped config file with the simulator's addresses, the key only in the credential."""
    port = free_port()
    document = yaml.safe_load(EXAMPLE_CONFIG.read_text())
    document["letta"]["base-url"] = simulator.url
    document["web.listen-address"] = f"127.0.0.1:{port}"
    document["version.registry-url"] = f"{simulator.url}/_registry"
    document["version.pypi-url"] = f"{simulator.url}/_pypi"
    config = work / "config.yml"
    config.write_text(yaml.safe_dump(document))
    journal_path = work / "journal.log"
    with credentials_directory(work) as credentials, open(journal_path, "wb") as journal:
        process = subprocess.Popen(
            [*wrapper, *unit_argv(artifacts, credentials, config)],
            env=systemd_environment(credentials),
            cwd="/",
            stdout=journal,
            stderr=subprocess.STDOUT,
        )
        try:
            yield UnitRun(process, f"http://127.0.0.1:{port}", journal_path)
        finally:
            if wrapper:
                _terminate_traced(process.pid)
            else:
                process.terminate()  # SIGTERM, as systemd stops a service
            try:
                process.wait(timeout=15)
            finally:
                stop_process(process)


def _terminate_traced(tracer: int) -> None:
    """SIGTERM to the main thread of the tracer's child, where an untraced exporter gets it.

    Signalling the tracer would only detach it; and a signal to a traced process may land on any
    of its threads, where the main thread, waiting in signal.pause(), would never see it.
    """
    children = Path(f"/proc/{tracer}/task/{tracer}/children").read_text().split()
    libc = ctypes.CDLL(None, use_errno=True)
    for pid in map(int, children):
        libc.tgkill(pid, pid, signal.SIGTERM)


def wait_for_fleet(run: UnitRun) -> str:
    return str(
        wait_until(
            lambda: _fleet_metrics(run.url + "/metrics"),
            60,
            f"fleet metrics from the unit's command line (journal: {run.journal})",
        )
    )


def _fleet_metrics(url: str) -> str | None:
    response = httpx.get(url, timeout=5)
    lines = response.text.splitlines()
    fleet = [line for line in lines if line.startswith("letta_environments{")]
    # The fleet is published a moment before the poll's own metrics are updated.
    if response.status_code != 200 or not fleet or "letta_exporter_up 1.0" not in lines:
        return None
    assert sum(float(line.rsplit(" ", 1)[1]) for line in fleet) == 60, fleet
    return response.text


def test_the_units_command_line_serves_the_fleet(
    artifacts: Artifacts, simulator: SimulatorHTTPServer, tmp_path: Path
) -> None:
    with running_unit(artifacts, simulator, tmp_path) as run:
        body = wait_for_fleet(run)
    journal = run.journal.read_text()
    assert run.process.returncode == 0, f"exit {run.process.returncode} on SIGTERM:\n{journal}"
    for registry in ("npm", "pypi"):
        assert LOOKED_UP.format(registry) in body
    assert "process_start_time_seconds" in body, "ProcSubset=pid would take these away"
    assert API_KEY not in journal


def syscall_group(name: str) -> set[str]:
    """The system calls of a systemd group such as @system-service, nested groups expanded."""
    result = subprocess.run(
        [systemd_analyze(), "syscall-filter", "--no-pager", name],
        capture_output=True,
        text=True,
        check=True,
    )
    calls: set[str] = set()
    for line in result.stdout.splitlines()[1:]:
        word = line.strip()
        if word.startswith("@"):
            calls |= syscall_group(word)
        elif word and not word.startswith("#"):
            calls.add(word)
    return calls


def allowed_syscalls() -> set[str]:
    """What the unit's SystemCallFilter= lines leave: the first allows, `~` lines then deny."""
    allowed: set[str] = set()
    for value in setting("SystemCallFilter"):
        deny = value.startswith("~")
        names = value.removeprefix("~").split()
        calls = set().union(*(syscall_group(n) if n.startswith("@") else {n} for n in names))
        allowed = allowed - calls if deny else allowed | calls
    return allowed


def test_the_sandbox_allows_every_system_call_and_socket_the_exporter_makes(
    artifacts: Artifacts, simulator: SimulatorHTTPServer, tmp_path: Path
) -> None:
    """strace of a start, a poll, plain and gzip scrapes and a SIGTERM, against the filters."""
    trace = tmp_path / "strace.log"
    wrapper = (require_tool("strace"), "-f", "-qq", "-o", str(trace))
    with running_unit(artifacts, simulator, tmp_path, wrapper) as run:
        wait_for_fleet(run)
        gzip = httpx.get(run.url + "/metrics", headers={"Accept-Encoding": "gzip"}, timeout=5)
        assert gzip.headers.get("content-encoding") == "gzip"
    assert run.process.returncode == 0, run.journal.read_text()
    text = trace.read_text()
    made = set(re.findall(r"^\d+ +(?:<\.\.\. )?([a-z0-9_]+)[( ]", text, re.MULTILINE))
    assert {"execve", "socket", "bind", "accept4", "connect"} <= made, sorted(made)
    denied = sorted(made - allowed_syscalls())
    assert not denied, f"SystemCallFilter= would refuse {denied} (EPERM)"
    families = set(re.findall(r"\bsocket\((AF_[A-Z0-9]+)", text))
    assert families <= set(one("RestrictAddressFamilies").split()), families
    assert not re.search(r"PROT_WRITE\|PROT_EXEC|PROT_EXEC\|PROT_WRITE", text), (
        "MemoryDenyWriteExecute= would refuse a writable and executable mapping"
    )


def test_a_missing_config_file_exits_2_so_systemd_does_not_restart(
    artifacts: Artifacts, tmp_path: Path
) -> None:
    with credentials_directory(tmp_path) as credentials:
        result = subprocess.run(
            unit_argv(artifacts, credentials, tmp_path / "absent.yml"),
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
            env=systemd_environment(credentials),
        )
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert "--config.file" in result.stderr
