"""The command line: configuration errors, --once, and the real CLI against the simulator."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from exporter.config import load_config
from exporter.errors import ConfigError
from exporter.units import format_duration, parse_duration, parse_size
from letta_simulator import LATEST_RELEASE, SimulatorHTTPServer
from tests.conftest import API_KEY, LOOKED_UP, ROOT, exporter_process, require_tool, wait_until
from tests.fleet import served_value

LATEST_INFO = (
    f'letta_environments_latest_version_info{{version="{LATEST_RELEASE}",source="registry"}} 1'
)

FLEET_FAMILIES = {
    "letta_environments",
    "letta_environments_latest_version_info",
    "letta_environments_outdated",
    "letta_environments_self_update",
    "letta_environments_heartbeat_age_seconds",
    "letta_environments_upgradable",
    "letta_environments_not_upgradable",
    "letta_environments_node_major",
    "letta_code_release_timestamp_seconds",
    "letta_environment_info",
    "letta_environment_connected",
    "letta_environment_last_heartbeat_timestamp_seconds",
    "letta_environment_last_seen_timestamp_seconds",
    "letta_environment_connected_timestamp_seconds",
    "letta_environment_first_seen_timestamp_seconds",
}
OWN_FAMILIES = {
    "letta_exporter_up",
    "letta_exporter_last_success_timestamp_seconds",
    "letta_exporter_poll_duration_seconds",
    "letta_exporter_poll_interval_seconds",
    "letta_exporter_polls",
    "letta_exporter_api_requests",
    "letta_exporter_invalid_records",
    "letta_exporter_build_info",
    "letta_exporter_environments_dropped",
    "letta_exporter_release_lookups",
    "letta_exporter_release_last_success_timestamp_seconds",
}


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("LETTA_")}
    return subprocess.run(
        [sys.executable, "-m", "exporter", *args],
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30),
        ("2m", 120),
        ("1h30m", 5400),
        ("250ms", 0.25),
        ("45", 45),
        ("0.5", 0.5),
        ("1d", 86400),
    ],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.5, "500ms"), (10, "10s"), (120, "120s"), (600, "10m"), (3600, "1h"), (86400, "24h")],
)
def test_help_shows_defaults_as_flags_take_them(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("text", "size"),
    [("8MiB", 8 << 20), ("8MB", 8 << 20), ("512KiB", 512 << 10), ("1GiB", 1 << 30), ("4096", 4096)],
)
def test_sizes(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "x", "8 TiB", "-1", "0", "1.5MiB", "8mib"])
def test_bad_sizes(text: str) -> None:
    with pytest.raises(ValueError, match="size"):
        parse_size(text)


def test_the_caps_default_with_margin_and_come_from_flags_or_the_file(tmp_path: Path) -> None:
    defaults = load_config([], {"LETTA_API_KEY": "k"}).config
    assert defaults.max_response_size == 8 << 20 and defaults.max_rows == 200_000
    assert defaults.version_max_response_size == 16 << 20
    config_file = tmp_path / "config.yml"
    config_file.write_text("letta:\n  max-response-size: 2MiB\nversion.max-response-size: 1MiB\n")
    config = load_config(
        [f"--config.file={config_file}", "--letta.max-rows=5000"], {"LETTA_API_KEY": "k"}
    ).config
    assert config.max_response_size == 2 << 20 and config.max_rows == 5000
    assert config.version_max_response_size == 1 << 20


@pytest.mark.parametrize("text", ["", "x", "10 s", "5y", "-3", "0", "1m-2s", "inf", "nan"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_every_config_error_is_reported_together() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(
            [
                "--letta.poll-interval=soon",
                "--letta.page-size=0",
                "--letta.base-url=ftp://x",
                "--web.listen-address=nowhere",
            ],
            {},
        )
    message = str(info.value)
    for part in (
        "--letta.poll-interval",
        "--letta.page-size",
        "--letta.base-url",
        "--web.listen-address",
        "no API key",
    ):
        assert part in message
    assert "\n" not in message


def test_precedence_flags_then_environment_then_file(tmp_path: Path) -> None:
    config_file = tmp_path / "config.yml"
    config_file.write_text(
        "letta:\n  base-url: https://file.example\n  poll-interval: 2m\n  page-size: 50\n"
        "collector.environment: false\nweb.listen-address: ':9999'\n"
    )
    invocation = load_config(
        [f"--config.file={config_file}", "--letta.page-size=75"],
        {"LETTA_API_KEY": "k", "LETTA_BASE_URL": "https://env.example"},
    )
    config = invocation.config
    assert config.base_url == "https://env.example"
    assert config.page_size == 75
    assert config.poll_interval == 120 and config.poll_jitter == 5.0
    assert config.collector_environment is False and config.listen_address == ":9999"


def test_defaults() -> None:
    config = load_config([], {"LETTA_API_KEY": "k"}).config
    assert config.base_url == "https://api.letta.com" and config.listen_address == ":8377"
    assert config.poll_interval == 60 and config.page_size == 100
    assert config.online_threshold == 120 and config.environment_max == 100_000
    assert config.effective_max_data_age == 600 and config.effective_poll_timeout == 55
    assert config.collector_environment and config.environment_extra_labels == ()


def test_config_file_errors_are_named(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text("letta:\n  poll-interval: [\n")
    with pytest.raises(ConfigError, match="not valid YAML at line"):
        load_config([f"--config.file={bad}"], {"LETTA_API_KEY": "k"})
    unknown = tmp_path / "unknown.yml"
    unknown.write_text("letta:\n  poll-intervall: 30s\n")
    with pytest.raises(ConfigError, match=r"unknown option 'letta\.poll-intervall'"):
        load_config([f"--config.file={unknown}"], {"LETTA_API_KEY": "k"})
    with pytest.raises(ConfigError, match="cannot read"):
        load_config([f"--config.file={tmp_path / 'missing.yml'}"], {"LETTA_API_KEY": "k"})


def test_api_key_from_a_file_and_never_in_reprs(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("sk-from-file-42\n")
    config = load_config([f"--letta.api-key-file={key_file}"], {}).config
    assert config.api_key == SecretStr("sk-from-file-42")
    assert "sk-from-file-42" not in repr(config) and "sk-from-file-42" not in str(config)
    key_file.write_text("")
    with pytest.raises(ConfigError, match="file is empty"):
        load_config([f"--letta.api-key-file={key_file}"], {})


@pytest.mark.parametrize(
    ("args", "env", "fragment"),
    [
        ([], {}, "no API key"),
        (["--letta.poll-interval=often"], {"LETTA_API_KEY": "k"}, "invalid duration"),
        ([], {"LETTA_API_KEY": "k", "LETTA_BASE_URL": "not a url"}, "not an http(s) URL"),
        (["--no-such-flag"], {"LETTA_API_KEY": "k"}, "unrecognized arguments"),
        (["--letta.source=cloud"], {"LETTA_API_KEY": "k"}, "must be one of local, remote"),
        (["--collector.environment.extra-labels=home"], {"LETTA_API_KEY": "k"}, "unknown label"),
        (["--letta.max-response-size=lots"], {"LETTA_API_KEY": "k"}, "invalid size 'lots'"),
        (["--letta.max-rows=0"], {"LETTA_API_KEY": "k"}, "--letta.max-rows: must be at least 1"),
        (
            ["--letta.page-size=1000", "--letta.max-response-size=512KiB"],
            {"LETTA_API_KEY": "k"},
            "--letta.max-response-size: too small for pages of --letta.page-size=1000 rows",
        ),
    ],
)
def test_bad_configuration_is_one_line_exit_2_no_traceback(
    args: list[str], env: dict[str, str], fragment: str
) -> None:
    result = _run(*args, env=env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("letta-environments-exporter: error:") and fragment in lines[0]
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_a_busy_port_is_a_clean_error(simulator: SimulatorHTTPServer) -> None:
    host, port = simulator.server_address[:2]
    result = _run(f"--web.listen-address={host!s}:{port}", env={"LETTA_API_KEY": "k"})
    assert result.returncode == 2 and "cannot listen" in result.stderr
    assert "Traceback" not in result.stderr


def test_help_and_version() -> None:
    result = _run("--help")
    assert result.returncode == 0 and "--web.listen-address" in result.stdout
    assert "--no-collector.environment" in result.stdout
    assert _run("--version").stdout.startswith("letta-environments-exporter ")


def test_once_prints_the_exposition_and_it_passes_promtool(simulator: SimulatorHTTPServer) -> None:
    result = _run(
        "--once",
        f"--letta.base-url={simulator.url}",
        "--letta.page-size=7",
        f"--version.registry-url={simulator.url}/_registry",
        f"--version.pypi-url={simulator.url}/_pypi",
        env={"LETTA_API_KEY": API_KEY},
    )
    assert result.returncode == 0, result.stderr
    families = {f.name for f in text_string_to_metric_families(result.stdout)}
    assert families >= FLEET_FAMILIES | OWN_FAMILIES
    environments = sum(
        s.value
        for f in text_string_to_metric_families(result.stdout)
        for s in f.samples
        if s.name == "letta_environments"
    )
    assert environments == 60
    assert LATEST_INFO in (result.stdout)
    check = subprocess.run(
        [require_tool("promtool"), "check", "metrics"],
        input=result.stdout,
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode == 0, check.stdout + check.stderr


def test_once_fails_clearly_with_a_wrong_key(simulator: SimulatorHTTPServer) -> None:
    result = _run(
        "--once",
        f"--letta.base-url={simulator.url}",
        "--no-version.registry",
        "--no-version.pypi",
        env={"LETTA_API_KEY": "wrong-key-xyz"},
    )
    assert result.returncode == 1 and result.stdout == ""
    assert "auth_error" in result.stderr and "the poll failed" in result.stderr
    assert "wrong-key-xyz" not in result.stderr


def test_the_real_cli_serves_every_family_from_the_simulator(
    simulator: SimulatorHTTPServer,
) -> None:
    with exporter_process(
        f"--letta.base-url={simulator.url}",
        "--letta.poll-interval=1s",
        "--letta.page-size=25",
        f"--version.registry-url={simulator.url}/_registry",
        f"--version.pypi-url={simulator.url}/_pypi",
    ) as running:
        url = running.url
        text = httpx.get(f"{url}/metrics").text
        families = {f.name for f in text_string_to_metric_families(text)}
        assert families >= FLEET_FAMILIES | OWN_FAMILIES
        check = subprocess.run(
            [require_tool("promtool"), "check", "metrics"],
            input=text,
            capture_output=True,
            text=True,
            check=False,
        )
        assert check.returncode == 0, check.stdout + check.stderr

        def polls() -> float:
            return served_value(url, "letta_exporter_polls_total", result="success")

        wait_until(lambda: polls() >= 3, 15, "three successful polls")
        assert LATEST_INFO in (text)
        for registry in ("npm", "pypi"):
            assert LOOKED_UP.format(registry) in text
        assert 'href="/metrics"' in httpx.get(f"{url}/").text


def test_the_demo_runs_with_no_api_key() -> None:
    with exporter_process("--demo", "--demo.fleet-size=30", env={"LETTA_API_KEY": ""}) as running:
        url = running.url
        text = httpx.get(f"{url}/metrics").text
        total = sum(
            s.value
            for f in text_string_to_metric_families(text)
            for s in f.samples
            if s.name == "letta_environments"
        )
        assert total == 30


def test_sigterm_shuts_down_cleanly_and_a_burst_of_signals_cannot_hang_it(
    simulator: SimulatorHTTPServer,
) -> None:
    with exporter_process(f"--letta.base-url={simulator.url}") as running:
        running.process.send_signal(signal.SIGTERM)
        assert running.process.wait(timeout=10) == 0
        assert "shutting down" in running.log()
    with exporter_process(f"--letta.base-url={simulator.url}") as running:
        # A second signal may end it by its default action; what matters is that it ends.
        for _ in range(2000):
            if running.process.poll() is not None:
                break
            running.process.send_signal(signal.SIGTERM)
        running.process.wait(timeout=10)


class _HeldUpstream(ThreadingHTTPServer):
    """An API on loopback that takes the request, then answers only when released."""

    daemon_threads = True

    def __init__(self) -> None:
        self.asked = threading.Event()
        self.released = threading.Event()
        self.requests = 0
        super().__init__(("127.0.0.1", 0), _HeldHandler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_port}"


class _HeldHandler(BaseHTTPRequestHandler):
    server: _HeldUpstream

    def do_GET(self) -> None:
        self.server.requests += 1
        self.server.asked.set()
        self.server.released.wait(120)  # bounded: the test releases it once the exporter is gone
        body = b'{"connections": [], "hasNextPage": false}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_sigterm_during_a_poll_abandons_it_without_an_error() -> None:
    upstream = _HeldUpstream()
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    try:
        # The request's own timeout and the poll's deadline are minutes away: only the
        # shutdown can end this poll before the upstream answers.
        with exporter_process(
            f"--letta.base-url={upstream.url}",
            "--letta.poll-interval=10m",
            "--letta.request-timeout=5m",
            ready=False,
        ) as running:
            wait_until(upstream.asked.is_set, 20, "the first poll's request upstream")
            running.process.send_signal(signal.SIGTERM)
            assert running.process.wait(timeout=20) == 0
            assert not upstream.released.is_set()  # it exited while the request was held
            log = running.log()
        assert "poll abandoned" in log, log
        assert "level=error" not in log and "internal_error" not in log, log
        assert "Traceback" not in log, log
        assert upstream.requests == 1  # abandoned, not retried
    finally:
        upstream.released.set()
        upstream.shutdown()
        upstream.server_close()


def _tgkill(pid: int, tid: int, signum: int) -> None:
    """Send a signal to one thread of another process (Linux `tgkill`)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    sys_tgkill = {"x86_64": 234, "aarch64": 131}[os.uname().machine]
    if libc.syscall(sys_tgkill, pid, tid, signum) != 0:
        raise OSError(ctypes.get_errno(), "tgkill failed")


def test_a_sigterm_that_lands_on_another_thread_still_stops_the_exporter(
    simulator: SimulatorHTTPServer,
) -> None:
    """The kernel may hand a process' SIGTERM to any of its threads (it did under strace)."""
    with exporter_process(f"--letta.base-url={simulator.url}") as running:
        pid = running.process.pid
        threads = sorted(int(t) for t in os.listdir(f"/proc/{pid}/task") if int(t) != pid)
        assert threads, "the exporter runs its server and scheduler in threads"
        # A thread that served one request may end between the listing and the signal: the
        # first thread still alive gets it (the server's and the scheduler's live throughout).
        for thread in threads:
            with contextlib.suppress(ProcessLookupError):
                _tgkill(pid, thread, signal.SIGTERM)
                break
        else:
            raise AssertionError(f"none of the exporter's threads {threads} took the signal")
        wait_until(lambda: running.process.poll() is not None, 15, "the exporter to exit")
        assert running.process.returncode == 0
        assert "shutting down" in running.log()
