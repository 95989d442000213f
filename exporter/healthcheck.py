"""The container's health check: ask the running exporter's `/-/healthy` where it was told to
listen.

A `HEALTHCHECK` runs in a process of its own, which knows nothing of the exporter's flags. It
reads them from `/proc`: the command line and environment of the exporter process (PID 1 in
the image, else the first process running the exporter), parsed by the exporter's own
configuration, so `--web.listen-address` and `--web.config.file` in flags or the config file
are followed (relative paths from the exporter's working directory; its API key is not read).
With TLS it speaks https (the certificate is not checked: the question is whether this process
answers); with basic auth a 401 is an answer; with client certificates required, the server's
part of a TLS handshake is. Exit 0 when healthy, 1 otherwise, one line on stderr saying why.
"""

from __future__ import annotations

import os
import socket
import ssl
import sys
from collections.abc import Sequence
from pathlib import Path
from urllib.error import HTTPError
from urllib.request import Request, urlopen

from exporter.config import load_config
from exporter.errors import ConfigError
from exporter.server import parse_listen_address
from exporter.webconfig import load_web_config

SCRIPT = "letta-environments-exporter"
TIMEOUT = 4.0


def exporter_arguments(cmdline: Sequence[str]) -> list[str] | None:
    """The exporter's own arguments in a process's command line, or None if it is not one."""
    for index, part in enumerate(cmdline):
        if Path(part).name == SCRIPT:
            return list(cmdline[index + 1 :])
        if part == "-m" and cmdline[index + 1 : index + 2] == ["exporter"]:
            return list(cmdline[index + 2 :])
    return None


def _read_nul_separated(path: Path) -> list[str]:
    return [
        part.decode(errors="surrogateescape") for part in path.read_bytes().split(b"\0") if part
    ]


def find_exporter(
    pid: int | None = None, proc: Path = Path("/proc")
) -> tuple[list[str], dict[str, str], Path] | None:
    """The arguments, environment and working directory of the exporter process: ``pid``, or
    PID 1 first, then the others."""
    if pid is not None:
        pids = [pid]
    else:
        pids = sorted(
            (int(p.name) for p in proc.iterdir() if p.name.isdigit()), key=lambda p: p != 1
        )
    for pid in pids:
        if pid == os.getpid():
            continue
        try:
            arguments = exporter_arguments(_read_nul_separated(proc / str(pid) / "cmdline"))
            if arguments is None:
                continue
            pairs = _read_nul_separated(proc / str(pid) / "environ")
            cwd = (proc / str(pid) / "cwd").resolve(strict=True)
        except OSError:
            continue  # gone, or another user's
        environ = dict(pair.split("=", 1) for pair in pairs if "=" in pair)
        return arguments, environ, cwd
    return None


def check(arguments: Sequence[str], environ: dict[str, str], cwd: Path | None = None) -> str | None:
    """None when the exporter configured by these answers; else why not."""
    # Where it listens is the question, not its key: a key file rotated or removed since the
    # exporter started must not make it unhealthy.
    arguments = _without_key_file(arguments)
    environ = {**environ, "LETTA_API_KEY": "health-check"}
    previous = Path.cwd()
    try:
        if cwd is not None:
            os.chdir(cwd)
        config = load_config(arguments, environ).config
        web = load_web_config(config.web_config_file)
    except (ConfigError, SystemExit, OSError) as exc:
        return f"cannot read the exporter's configuration: {exc}"
    finally:
        os.chdir(previous)
    host, port = parse_listen_address(config.listen_address)
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    if web.tls is not None and web.tls.client_auth_type != "NoClientCert":
        return _handshake(host, port)
    scheme = "https" if web.tls is not None else "http"
    context = _unverified() if web.tls is not None else None
    netloc = f"[{host}]" if ":" in host else host
    url = f"{scheme}://{netloc}:{port}/-/healthy"
    try:
        with urlopen(Request(url), timeout=TIMEOUT, context=context) as response:  # noqa: S310
            return None if response.status == 200 else f"{url}: HTTP {response.status}"
    except HTTPError as exc:
        if exc.code == 401 and web.users:
            return None  # it answered; the credentials are the operator's, not ours
        return f"{url}: HTTP {exc.code}"
    except (OSError, ssl.SSLError) as exc:
        return f"{url}: {exc}"


def _unverified() -> ssl.SSLContext:
    """TLS that asks whether this process answers, not who it is (it runs beside it)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _without_key_file(arguments: Sequence[str]) -> list[str]:
    kept: list[str] = []
    skip = False
    for argument in arguments:
        if skip:
            skip = False
        elif argument == "--letta.api-key-file":
            skip = True  # its value is the next argument
        elif not argument.startswith("--letta.api-key-file="):
            kept.append(argument)
    return kept


def _handshake(host: str, port: int) -> str | None:
    """The server's part of a TLS handshake, without a client certificate: a connection the
    kernel accepted proves nothing (it queues them for a hung process too); the server's
    answer does, even when it is an alert refusing us."""
    try:
        with (
            socket.create_connection((host, port), timeout=TIMEOUT) as sock,
            _unverified().wrap_socket(sock) as tls,
        ):
            tls.version()
    except ssl.SSLError:
        return None  # it answered, with an alert: no certificate of ours
    except OSError as exc:
        return f"{host}:{port}: {exc}"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m exporter.healthcheck [PID]`: the exporter process ``PID``, or the one found."""
    args = sys.argv[1:] if argv is None else argv
    found = find_exporter(int(args[0]) if args else None)
    if found is None:
        print("health check: no exporter process found", file=sys.stderr)
        return 1
    problem = check(*found)
    if problem is not None:
        print(f"health check: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
