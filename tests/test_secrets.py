"""Secrets: the API key shows up nowhere, at DEBUG, on any failure path; TLS is verified."""

from __future__ import annotations

import os
import secrets
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from exporter.client import EnvironmentsClient
from exporter.config import load_config
from exporter.errors import AuthError
from letta_simulator import SimulatedFleet, SimulatorHTTPServer, start_simulator
from tests.certs import Authority
from tests.conftest import ROOT, exporter_process, free_port, wait_until

KEY = f"sk-let-{secrets.token_hex(12)}"  # distinctive: found only where it really is


@pytest.fixture
def keyed_simulator() -> Iterator[SimulatorHTTPServer]:
    server = start_simulator(fleet_size=30, seed=4, api_key=KEY, churn=False)
    try:
        yield server
    finally:
        server.close()


def _run_once(*args: str, key: str = KEY) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("LETTA_")}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "exporter",
            "--once",
            "--log.level=debug",
            "--no-version.registry",  # the test suite never reaches the internet
            "--no-version.pypi",
            *args,
        ],
        env={**base, "LETTA_API_KEY": key},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )


def _polls(text: str, result: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "letta_exporter_polls_total" and sample.labels["result"] == result:
                return float(sample.value)
    return 0.0


FAILURES = [
    ("auth_error", {"status": 401}),
    ("rate_limited", {"status": 429, "retry_after_ms": "20"}),
    ("http_error", {"status": 500}),
    ("connection_error", {"truncate": True}),
    ("invalid_response", {"non_json": True}),
    ("timeout", {"latency_ms": 400}),
]


def test_the_key_is_in_no_log_line_metric_or_error_on_any_failure_path(
    keyed_simulator: SimulatorHTTPServer,
) -> None:
    scraped: list[str] = []
    with exporter_process(
        f"--letta.base-url={keyed_simulator.url}",
        "--log.level=debug",
        "--letta.poll-interval=300ms",
        "--letta.request-timeout=200ms",
        "--letta.max-retries=1",
        "--letta.retry-backoff=10ms",
        "--letta.retry-backoff-max=20ms",
        env={"LETTA_API_KEY": KEY},
    ) as running:

        def scrape() -> str:
            text = httpx.get(f"{running.url}/metrics", timeout=5).text
            scraped.append(text)
            return text

        for result, fault in FAILURES:
            before = _polls(scrape(), result)
            assert httpx.post(f"{keyed_simulator.url}/_simulator/faults", json=fault).is_success
            wait_until(lambda r=result, b=before: _polls(scrape(), r) > b, 10, f"a {result} poll")
            httpx.delete(f"{keyed_simulator.url}/_simulator/faults")
        # Rows that fail validation are described in the log; their values never are.
        httpx.post(f"{keyed_simulator.url}/_simulator/faults", json={"invalid_rows": 3})
        wait_until(lambda: "invalid upstream row" in running.log(), 10, "the invalid rows")
        httpx.delete(f"{keyed_simulator.url}/_simulator/faults")
        wait_until(lambda: "poll recovered" in running.log(), 10, "the recovery")
        scrape()
        log = running.log()

    assert "level=debug" in log  # the log really was at DEBUG
    for result, _ in FAILURES:
        assert f"poll failed ({result})" in log, result
    assert "retrying /v1/environments" in log
    assert KEY not in log
    assert KEY[7:] not in log  # not even without its prefix
    assert all(KEY not in text for text in scraped) and len(scraped) > len(FAILURES)


def test_the_key_is_in_no_error_when_the_upstream_is_unreachable() -> None:
    result = _run_once(f"--letta.base-url=http://127.0.0.1:{free_port()}", "--letta.max-retries=0")
    assert result.returncode == 1
    assert "poll failed (connection_error): ConnectError" in result.stderr
    assert KEY not in result.stderr + result.stdout


def test_the_key_is_in_no_repr_and_no_exception(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(KEY + "\n")
    for config in (
        load_config([], {"LETTA_API_KEY": KEY}).config,
        load_config([f"--letta.api-key-file={key_file}"], {}).config,
    ):
        assert config.api_key.get_secret_value() == KEY
        for text in (repr(config), str(config), repr(config.api_key), f"{config.api_key}"):
            assert KEY not in text
        client = EnvironmentsClient(
            config.client_settings(), transport=httpx.MockTransport(lambda r: httpx.Response(401))
        )
        assert KEY not in repr(client)
        with pytest.raises(AuthError) as info:
            list(client.iter_pages(deadline=float("inf")))
        assert KEY not in str(info.value) and KEY not in repr(info.value)
        client.close()


# --- upstream TLS -------------------------------------------------------------------------


@pytest.fixture
def https_simulator(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """The simulator behind TLS, with a certificate from a CA of its own; (url, CA file)."""
    authority = Authority.create("Upstream Test CA")
    certificate, key = authority.issue("upstream", server=True)
    (tmp_path / "upstream.crt").write_bytes(certificate)
    (tmp_path / "upstream.key").write_bytes(key)
    (tmp_path / "ca.crt").write_bytes(authority.pem())
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "upstream.crt", tmp_path / "upstream.key")
    server = SimulatorHTTPServer(
        ("127.0.0.1", 0), SimulatedFleet(size=20, seed=2, churn=False), KEY
    )
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}", tmp_path / "ca.crt"
    finally:
        server.close()
        thread.join(5)


def test_upstream_tls_is_verified_by_default_and_a_ca_file_makes_it_trusted(
    https_simulator: tuple[str, Path],
) -> None:
    url, ca_file = https_simulator
    refused = _run_once(f"--letta.base-url={url}", "--letta.max-retries=0")
    assert refused.returncode == 1 and refused.stdout == ""
    assert "poll failed (connection_error): ConnectError" in refused.stderr
    trusted = _run_once(f"--letta.base-url={url}", f"--letta.ca-file={ca_file}")
    assert trusted.returncode == 0, trusted.stderr
    environments = sum(
        s.value
        for f in text_string_to_metric_families(trusted.stdout)
        for s in f.samples
        if s.name == "letta_environments"
    )
    assert environments == 20
    for output in (refused.stdout, refused.stderr, trusted.stdout, trusted.stderr):
        assert KEY not in output
