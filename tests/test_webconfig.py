"""`--web.config.file`: real TLS handshakes, client certificates, basic auth and headers."""

from __future__ import annotations

import base64
import os
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import bcrypt
import httpx
import pytest

from exporter.errors import ConfigError
from exporter.selfmetrics import ExporterMetrics
from exporter.server import ExporterHTTPServer, serve_in_background
from exporter.store import Store
from exporter.webconfig import BasicAuth, WebConfig, load_web_config
from letta_simulator import SimulatorHTTPServer
from tests.certs import PKI, Authority, make_pki
from tests.conftest import API_KEY, ROOT, free_port, wait_until

PASSWORD = "correct horse battery staple"
HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "deny",
    "Strict-Transport-Security": "max-age=31536000",
}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def password_hash() -> str:
    return bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).decode()


def _write(directory: Path, text: str, name: str = "web.yml") -> Path:
    path = directory / name
    path.write_text(text)
    return path


@contextmanager
def _serving(web: WebConfig, timeout: float = 5.0) -> Iterator[ExporterHTTPServer]:
    server = ExporterHTTPServer(
        ("127.0.0.1", 0),
        store=Store(),
        metrics=ExporterMetrics(60, process=False),
        telemetry_path="/metrics",
        max_data_age=600,
        web=web,
        connection_timeout=timeout,
    )
    serve_in_background(server)
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def _basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


# --- the file ---------------------------------------------------------------------------


def test_a_full_file_is_read_with_paths_relative_to_it(pki: PKI, password_hash: str) -> None:
    path = _write(
        pki.directory,
        f"""
tls_server_config:
  cert_file: server.crt
  key_file: server.key
  client_auth_type: RequireAndVerifyClientCert
  client_ca_file: ca.crt
  min_version: TLS13
basic_auth_users:
  prometheus: {password_hash}
http_server_config:
  http2: true
  headers:
    X-Content-Type-Options: nosniff
    X-Frame-Options: sameorigin
""",
    )
    web = load_web_config(path)
    assert web.tls is not None
    assert web.tls.cert_file == pki.server_cert and web.tls.client_ca_file == pki.ca
    assert web.tls.min_version == ssl.TLSVersion.TLSv1_3
    assert web.tls.max_version == ssl.TLSVersion.TLSv1_3
    assert web.tls.context().verify_mode == ssl.CERT_REQUIRED
    assert set(web.users) == {"prometheus"}
    assert web.headers == (("X-Content-Type-Options", "nosniff"), ("X-Frame-Options", "sameorigin"))
    assert password_hash not in repr(web)


def test_no_file_and_an_empty_file_serve_plain_http_to_anyone(tmp_path: Path) -> None:
    assert load_web_config(None) == WebConfig()
    assert load_web_config(_write(tmp_path, "")) == WebConfig()
    # As in exporter-toolkit: TLS is on only when a certificate, key, CA or auth type is set.
    assert (
        load_web_config(_write(tmp_path, "tls_server_config: {min_version: TLS13}\n")).tls is None
    )


def test_every_problem_in_the_file_is_reported_at_once(pki: PKI) -> None:
    path = _write(
        pki.directory,
        """
tls_server_config:
  cert_file: server.crt
  client_auth_type: RequireAnyClientCert
  min_version: TLS10
  cipher_suites: [TLS_AES_128_GCM_SHA256]
  cert_fiel: typo.crt
basic_auth_users:
  alice: plaintext-password
  bob: $2b$04$tooShort
http_server_config:
  headers:
    X-Frame-Options: allow-all
    Server: mine
rate_limit: {interval: 1s, burst: 10}
colour: blue
""",
        "bad.yml",
    )
    with pytest.raises(ConfigError) as info:
        load_web_config(path)
    message = str(info.value)
    assert "\n" not in message and message.startswith("--web.config.file")
    for fragment in (
        "missing key_file",
        "RequireAnyClientCert is not supported",
        "min_version: must be TLS12 or TLS13",
        "cipher_suites: not supported",
        "unknown key 'tls_server_config.cert_fiel'",
        "basic_auth_users.alice: not a bcrypt hash",
        "basic_auth_users.bob: not a bcrypt hash",
        "X-Frame-Options: must be one of deny, sameorigin",
        "'Server' cannot be configured",
        "rate_limit: not supported",
        "unknown key 'colour'",
    ):
        assert fragment in message, fragment
    assert "plaintext-password" not in message


@pytest.mark.parametrize(
    ("tls", "fragment"),
    [
        ("cert_file: server.crt\n  key_file: client.key", "cannot load cert_file and key_file"),
        ("cert_file: server.crt\n  key_file: nowhere.key", "no such file"),
        ("cert_file: server.crt\n  key_file: server.key\n  client_ca_file: ca.crt", "without a"),
        (
            "cert_file: server.crt\n  key_file: server.key\n"
            "  client_auth_type: RequireAndVerifyClientCert",
            "needs client_ca_file",
        ),
        (
            "cert_file: server.crt\n  key_file: server.key\n  client_auth_type: Sometimes",
            "must be one of NoClientCert",
        ),
        (
            "cert_file: server.crt\n  key_file: server.key\n  min_version: TLS13\n"
            "  max_version: TLS12",
            "min_version is newer than max_version",
        ),
        (
            "cert_file: server.crt\n  key_file: server.key\n"
            "  client_auth_type: VerifyClientCertIfGiven\n  client_ca_file: server.key",
            "cannot load client_ca_file",
        ),
    ],
)
def test_tls_settings_that_cannot_work_are_refused(pki: PKI, tls: str, fragment: str) -> None:
    path = _write(pki.directory, f"tls_server_config:\n  {tls}\n", "tls.yml")
    with pytest.raises(ConfigError, match=fragment):
        load_web_config(path)


def test_a_bad_web_config_stops_the_real_cli_with_one_line_and_exit_2(tmp_path: Path) -> None:
    path = _write(tmp_path, "basic_auth_users:\n  alice: hunter2\n")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "exporter",
            f"--web.config.file={path}",
            "--web.listen-address=:0",
            "--no-version.registry",
            "--no-version.pypi",
        ],
        env={**os.environ, "LETTA_API_KEY": API_KEY},
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "basic_auth_users.alice: not a bcrypt hash" in lines[0]
    assert "hunter2" not in result.stderr


# --- TLS on the wire ----------------------------------------------------------------------


def _tls_web(pki: PKI, **settings: str) -> WebConfig:
    lines = "".join(f"  {key}: {value}\n" for key, value in settings.items())
    text = f"tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n{lines}"
    return load_web_config(_write(pki.directory, text, "tls.yml"))


def test_tls_serves_clients_that_trust_the_ca_and_refuses_plain_http(pki: PKI) -> None:
    with _serving(_tls_web(pki)) as server:
        port = server.server_port
        response = httpx.get(f"https://127.0.0.1:{port}/metrics", verify=pki.client_context())
        assert response.status_code == 200 and b"letta_exporter_up" in response.content
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            httpx.get(f"https://127.0.0.1:{port}/metrics")  # the system CAs do not know ours
        with pytest.raises(httpx.TransportError):
            httpx.get(f"http://127.0.0.1:{port}/metrics")  # plain HTTP to a TLS port: no answer


def test_min_version_tls13_refuses_a_tls12_client(pki: PKI) -> None:
    with _serving(_tls_web(pki, min_version="TLS13")) as server:
        url = f"https://127.0.0.1:{server.server_port}/-/healthy"
        with pytest.raises(httpx.ConnectError, match=r"VERSION|PROTOCOL|ALERT"):
            httpx.get(url, verify=pki.client_context(maximum=ssl.TLSVersion.TLSv1_2))
        assert httpx.get(url, verify=pki.client_context()).status_code == 200


def test_require_and_verify_client_cert(pki: PKI) -> None:
    web = _tls_web(pki, client_auth_type="RequireAndVerifyClientCert", client_ca_file="ca.crt")
    with _serving(web) as server:
        url = f"https://127.0.0.1:{server.server_port}/metrics"
        assert httpx.get(url, verify=pki.client_context(client="trusted")).status_code == 200
        for client in (None, "rogue"):  # no certificate; one from a CA we do not trust
            with pytest.raises(httpx.TransportError):
                httpx.get(url, verify=pki.client_context(client=client))


def test_verify_client_cert_if_given(pki: PKI) -> None:
    web = _tls_web(pki, client_auth_type="VerifyClientCertIfGiven", client_ca_file="ca.crt")
    with _serving(web) as server:
        url = f"https://127.0.0.1:{server.server_port}/metrics"
        assert httpx.get(url, verify=pki.client_context()).status_code == 200
        assert httpx.get(url, verify=pki.client_context(client="trusted")).status_code == 200
        with pytest.raises(httpx.TransportError):
            httpx.get(url, verify=pki.client_context(client="rogue"))


def _served_certificate(port: int, pki: PKI) -> str:
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        pki.client_context().wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        certificate = tls.getpeercert()
    assert certificate is not None
    subject = dict(pair[0] for pair in certificate["subject"])
    return str(subject["commonName"])


def test_a_rotated_certificate_is_served_to_new_connections_without_a_restart(
    tmp_path: Path,
) -> None:
    pki = make_pki(tmp_path)
    with _serving(_tls_web(pki)) as server:
        assert _served_certificate(server.server_port, pki) == "exporter"
        authority = Authority.create("Test CA")
        certificate, key = authority.issue("exporter-rotated", server=True)
        pki.ca.write_bytes(authority.pem())
        pki.server_cert.write_bytes(certificate)
        pki.server_key.write_bytes(key)
        later = time.time_ns() + 5_000_000_000  # a coarse file system must see a new mtime
        for path in (pki.server_cert, pki.server_key):
            os.utime(path, ns=(later, later))
        assert _served_certificate(server.server_port, pki) == "exporter-rotated"
        pki.server_key.write_text("not a key")  # a broken rotation keeps the last good pair
        os.utime(pki.server_key, ns=(later + 1, later + 1))
        assert _served_certificate(server.server_port, pki) == "exporter-rotated"


def test_a_client_that_never_sends_its_client_hello_blocks_nobody(pki: PKI) -> None:
    with _serving(_tls_web(pki), timeout=3.0) as server:
        port = server.server_port
        started = time.monotonic()
        stuck = socket.create_connection(("127.0.0.1", port))
        try:
            context = pki.client_context()
            for _ in range(3):
                response = httpx.get(f"https://127.0.0.1:{port}/-/healthy", verify=context)
                assert response.status_code == 200
            # Served while the stuck one still waits: its connection is open, with nothing sent.
            stuck.setblocking(False)
            with pytest.raises(BlockingIOError):
                stuck.recv(1)
            stuck.settimeout(10)
            assert stuck.recv(1) == b""  # then the server hangs up on it
            assert time.monotonic() - started >= 2.9  # not before its 3 s handshake timeout
        finally:
            stuck.close()


# --- basic auth and headers ----------------------------------------------------------------


def test_basic_auth_protects_every_path_and_answers_401_with_a_challenge(
    password_hash: str,
) -> None:
    with _serving(WebConfig(users={"prometheus": password_hash.encode()})) as server:
        url = f"http://127.0.0.1:{server.server_port}"
        for path in ("/metrics", "/", "/-/healthy", "/-/ready", "/no-such-page"):
            denied = httpx.get(url + path)
            assert denied.status_code == 401, path
            assert denied.headers["www-authenticate"].startswith("Basic realm=")
            assert b"letta_exporter" not in denied.content
        good = _basic("prometheus", PASSWORD)
        assert httpx.get(f"{url}/metrics", headers=good).status_code == 200
        assert httpx.get(f"{url}/-/healthy", headers=good).status_code == 200
        assert httpx.get(f"{url}/no-such-page", headers=good).status_code == 404
        assert httpx.head(f"{url}/metrics", headers=good).status_code == 200
        for headers in (
            _basic("prometheus", "wrong"),
            _basic("prometheus", PASSWORD + " "),
            _basic("nobody", PASSWORD),
            _basic("PROMETHEUS", PASSWORD),
            {"Authorization": "Basic not-base64!"},
            {"Authorization": "Bearer " + PASSWORD},
            {"Authorization": "Basic " + base64.b64encode(b"no-colon").decode()},
        ):
            assert httpx.get(f"{url}/metrics", headers=headers).status_code == 401, headers


def test_headers_are_on_every_response(password_hash: str) -> None:
    web = WebConfig(users={"prometheus": password_hash.encode()}, headers=tuple(HEADERS.items()))
    good = _basic("prometheus", PASSWORD)
    with _serving(web) as server, httpx.Client() as client:
        url = f"http://127.0.0.1:{server.server_port}"
        responses = [
            client.get(f"{url}/metrics", headers=good),
            client.get(f"{url}/metrics"),  # 401
            client.get(f"{url}/nope", headers=good),  # 404
            client.get(f"{url}/-/ready", headers=good),  # 503 before the first poll
            client.post(f"{url}/metrics", headers=good),  # 501 from http.server itself
        ]
        assert [r.status_code for r in responses] == [200, 401, 404, 503, 501]
        for response in responses:
            for name, value in HEADERS.items():
                assert response.headers.get(name) == value, (response.status_code, name)


def test_unknown_users_cost_as_much_as_known_ones_and_successes_are_cached() -> None:
    hashed = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(8))
    auth = BasicAuth({"alice": hashed})

    def timed(user: str, password: str) -> float:
        header = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        started = time.perf_counter()
        assert auth.check(header) is (user == "alice" and password == "s3cret")
        return time.perf_counter() - started

    known, unknown = [], []
    for attempt in range(8):  # interleaved, and the fastest of each compared: load-proof
        known.append(timed("alice", f"guess-{attempt}"))
        unknown.append(timed(f"mallory-{attempt}", f"guess-{attempt}"))
    assert 0.5 < min(unknown) / min(known) < 2.0  # both pay one bcrypt at the same cost
    first = timed("alice", "s3cret")
    again = timed("alice", "s3cret")
    assert again < first / 10  # a scrape does not pay bcrypt every time


def test_passwords_longer_than_72_bytes_are_truncated_like_htpasswd_does() -> None:
    long_password = "p" * 72
    auth = BasicAuth({"alice": bcrypt.hashpw(long_password.encode(), bcrypt.gensalt(4))})
    header = "Basic " + base64.b64encode(f"alice:{long_password}extra".encode()).decode()
    assert auth.check(header)


# --- the real CLI -------------------------------------------------------------------------


def test_the_real_cli_serves_https_with_basic_auth(
    pki: PKI, password_hash: str, simulator: SimulatorHTTPServer, tmp_path: Path
) -> None:
    config = _write(
        tmp_path,
        f"tls_server_config:\n  cert_file: {pki.server_cert}\n  key_file: {pki.server_key}\n"
        f"basic_auth_users:\n  prometheus: {password_hash}\n"
        "http_server_config:\n  headers:\n    X-Content-Type-Options: nosniff\n",
    )
    port = free_port()
    log_path = tmp_path / "exporter.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "exporter",
                f"--web.listen-address=127.0.0.1:{port}",
                f"--web.config.file={config}",
                f"--letta.base-url={simulator.url}",
                "--no-version.registry",
                "--no-version.pypi",
            ],
            env={**os.environ, "LETTA_API_KEY": API_KEY},
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
    try:
        url = f"https://127.0.0.1:{port}"
        with httpx.Client(verify=pki.client_context()) as client:
            good = _basic("prometheus", PASSWORD)
            wait_until(
                lambda: client.get(f"{url}/-/ready", headers=good).status_code == 200,
                20,
                "the exporter to be ready over https",
            )
            metrics = client.get(f"{url}/metrics", headers=good)
            assert metrics.status_code == 200 and b"letta_environments{" in metrics.content
            assert metrics.headers["x-content-type-options"] == "nosniff"
            assert client.get(f"{url}/metrics").status_code == 401
        assert f"metrics at https://127.0.0.1:{port}/metrics" in log_path.read_text()
    finally:
        process.terminate()
        process.wait(timeout=10)
