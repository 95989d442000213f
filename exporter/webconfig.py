"""`--web.config.file`: TLS, basic auth and response headers, in exporter-toolkit's YAML format.

Operators reuse the files they already have for other exporters. Whatever Python's TLS cannot do
the way Go's does is refused at start-up with a reason, never silently weakened:

    tls_server_config:
      cert_file: server.crt          # relative paths are read from the file's directory
      key_file: server.key
      client_auth_type: RequireAndVerifyClientCert
      client_ca_file: clients-ca.crt
      min_version: TLS12             # TLS12 (default) or TLS13
    basic_auth_users:
      prometheus: $2y$10$...         # bcrypt hashes (htpasswd -nBC 10 "" | tr -d ':\\n')
    http_server_config:
      headers:
        X-Content-Type-Options: nosniff
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import os
import secrets
import ssl
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bcrypt
import yaml

from exporter.errors import ConfigError

log = logging.getLogger(__name__)

# Python's ssl cannot accept a client certificate without verifying it, so Go's
# RequireAnyClientCert has no faithful equivalent; RequestClientCert never verifies either,
# so it authenticates nobody and is served as NoClientCert.
CLIENT_AUTH_TYPES = {
    "NoClientCert": ssl.CERT_NONE,
    "RequestClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
TLS_VERSIONS = {"TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}
# exporter-toolkit's list, on purpose the same: only these headers, some only with these values.
ALLOWED_HEADERS: dict[str, tuple[str, ...]] = {
    "Strict-Transport-Security": (),
    "X-Content-Type-Options": ("nosniff",),
    "X-Frame-Options": ("deny", "sameorigin"),
    "X-XSS-Protection": (),
    "Content-Security-Policy": (),
}
_TLS_KEYS = {
    "cert_file",
    "key_file",
    "client_ca_file",
    "client_auth_type",
    "min_version",
    "max_version",
    "prefer_server_cipher_suites",
}
_UNSUPPORTED = {
    "tls_server_config.cert": "inline certificates are not supported; use cert_file",
    "tls_server_config.key": "inline keys are not supported; use key_file",
    "tls_server_config.client_ca": "inline CAs are not supported; use client_ca_file",
    "tls_server_config.cipher_suites": "not supported: OpenSSL's defaults apply",
    "tls_server_config.curve_preferences": "not supported: OpenSSL's defaults apply",
    "tls_server_config.client_allowed_sans": "not supported",
    "rate_limit": "not supported",
}
_ENABLING_KEYS = ("cert_file", "key_file", "client_ca_file", "client_auth_type")
_BCRYPT_PREFIXES = ("$2a$", "$2b$", "$2y$")
_BCRYPT_MAX_PASSWORD = 72  # bytes; longer passwords are truncated, as Go's and htpasswd's bcrypt do
_AUTH_CACHE_SIZE = 1024


@dataclass(frozen=True)
class TLSSettings:
    """The server side of TLS: certificate, key and who may connect."""

    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None
    client_auth_type: str = "NoClientCert"
    min_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2
    max_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3
    prefer_server_cipher_suites: bool = True

    def context(self) -> ssl.SSLContext:
        """A fresh server context from the files as they are now; raises OSError/SSLError."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = self.min_version
        context.maximum_version = self.max_version
        context.load_cert_chain(self.cert_file, self.key_file)
        context.verify_mode = CLIENT_AUTH_TYPES[self.client_auth_type]
        if self.client_ca_file is not None:
            context.load_verify_locations(cafile=self.client_ca_file)
        if self.prefer_server_cipher_suites:
            context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
        return context

    def files(self) -> tuple[Path, ...]:
        return (
            self.cert_file,
            self.key_file,
            *(() if self.client_ca_file is None else (self.client_ca_file,)),
        )


@dataclass(frozen=True)
class WebConfig:
    """A checked web configuration; the default serves plain HTTP to anyone."""

    tls: TLSSettings | None = None
    users: Mapping[str, bytes] = field(default_factory=dict)
    headers: tuple[tuple[str, str], ...] = ()

    def __repr__(self) -> str:  # hashes are not secrets, but they are nobody's business either
        return (
            f"WebConfig(tls={self.tls!r}, users={sorted(self.users)!r}, headers={self.headers!r})"
        )


def load_web_config(path: Path | None) -> WebConfig:
    """Read and check the file, certificates included; one ConfigError names every problem."""
    if path is None:
        return WebConfig()
    errors: list[str] = []
    document = _read(path, errors)
    tls = None
    users: dict[str, bytes] = {}
    headers: list[tuple[str, str]] = []
    if document is not None:
        for key in document:
            if key in _UNSUPPORTED:
                errors.append(f"{key}: {_UNSUPPORTED[key]}")
            elif key not in ("tls_server_config", "basic_auth_users", "http_server_config"):
                errors.append(f"unknown key {key!r}")
        tls = _tls(_section(document, "tls_server_config", errors), path.parent, errors)
        users = _users(_section(document, "basic_auth_users", errors), errors)
        headers = _headers(_section(document, "http_server_config", errors), errors)
    if errors:
        raise ConfigError(f"--web.config.file {str(path)!r}: " + "; ".join(errors))
    return WebConfig(tls=tls, users=users, headers=tuple(headers))


def _read(path: Path, errors: list[str]) -> dict[str, Any] | None:
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        errors.append(f"cannot read it: {exc.strerror}")
        return None
    except UnicodeDecodeError:
        errors.append("not UTF-8 text")
        return None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        errors.append("not valid YAML" + (f" at line {mark.line + 1}" if mark is not None else ""))
        return None
    if document is None:
        return {}
    if not isinstance(document, dict):
        errors.append("must hold a mapping")
        return None
    return document


def _section(document: dict[str, Any], name: str, errors: list[str]) -> dict[str, Any]:
    value = document.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        errors.append(f"{name}: must be a mapping")
        return {}
    return value


def _tls(section: dict[str, Any], base: Path, errors: list[str]) -> TLSSettings | None:
    for key in section:
        name = f"tls_server_config.{key}"
        if name in _UNSUPPORTED:
            errors.append(f"{name}: {_UNSUPPORTED[name]}")
        elif key not in _TLS_KEYS:
            errors.append(f"unknown key {name!r}")
    if not any(section.get(key) for key in _ENABLING_KEYS):
        return None  # as in exporter-toolkit: no certificate, key, CA or auth type, no TLS
    count = len(errors)

    def path(key: str) -> Path | None:
        value = section.get(key)
        if value in (None, ""):
            return None
        if not isinstance(value, str):
            errors.append(f"tls_server_config.{key}: must be a file name")
            return None
        file = base / value
        if not file.is_file():
            errors.append(f"tls_server_config.{key}: no such file: {str(file)!r}")
        return file

    cert, key_path, client_ca = path("cert_file"), path("key_file"), path("client_ca_file")
    for name in ("cert_file", "key_file"):
        if section.get(name) in (None, ""):
            errors.append(f"tls_server_config: missing {name}")
    auth = str(section.get("client_auth_type") or "NoClientCert")
    if auth in ("RequireAnyClientCert", "RequireClientCert"):
        errors.append(
            f"tls_server_config.client_auth_type: {auth} is not supported (Python's TLS cannot "
            "accept a certificate without verifying it); use RequireAndVerifyClientCert with "
            "client_ca_file"
        )
    elif auth not in CLIENT_AUTH_TYPES:
        errors.append(
            f"tls_server_config.client_auth_type: must be one of {', '.join(CLIENT_AUTH_TYPES)}, "
            f"got {auth!r}"
        )
    elif CLIENT_AUTH_TYPES[auth] == ssl.CERT_NONE and section.get("client_ca_file"):
        errors.append(
            "tls_server_config.client_ca_file: set without a client_auth_type that verifies "
            "certificates (VerifyClientCertIfGiven or RequireAndVerifyClientCert)"
        )
    elif CLIENT_AUTH_TYPES[auth] != ssl.CERT_NONE and not section.get("client_ca_file"):
        errors.append(f"tls_server_config.client_auth_type: {auth} needs client_ca_file")
    versions = {}
    for name, default in (("min_version", "TLS12"), ("max_version", "TLS13")):
        value = str(section.get(name) or default)
        if value not in TLS_VERSIONS:
            errors.append(
                f"tls_server_config.{name}: must be TLS12 or TLS13 (older versions are not "
                f"offered), got {value!r}"
            )
        versions[name] = TLS_VERSIONS.get(value, TLS_VERSIONS[default])
    if versions["min_version"] > versions["max_version"]:
        errors.append("tls_server_config: min_version is newer than max_version")
    prefer = section.get("prefer_server_cipher_suites", True)
    if not isinstance(prefer, bool):
        errors.append("tls_server_config.prefer_server_cipher_suites: must be true or false")
    if len(errors) > count or cert is None or key_path is None:
        return None
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert, key_path)
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        errors.append(f"tls_server_config: cannot load cert_file and key_file: {_reason(exc)}")
    if client_ca is not None:
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_verify_locations(cafile=client_ca)
        except (OSError, ValueError) as exc:
            errors.append(f"tls_server_config: cannot load client_ca_file: {_reason(exc)}")
    if len(errors) > count:
        return None
    return TLSSettings(
        cert_file=cert,
        key_file=key_path,
        client_ca_file=client_ca,
        client_auth_type=auth,
        min_version=versions["min_version"],
        max_version=versions["max_version"],
        prefer_server_cipher_suites=prefer,
    )


def _reason(exc: Exception) -> str:
    """OpenSSL's short reason (`KEY_VALUES_MISMATCH`), else the OS's, else the message."""
    return str(getattr(exc, "reason", None) or getattr(exc, "strerror", None) or exc)


def _users(section: dict[str, Any], errors: list[str]) -> dict[str, bytes]:
    users: dict[str, bytes] = {}
    for user, hashed in section.items():
        name = str(user)
        if not isinstance(hashed, str) or not _is_bcrypt(hashed):
            errors.append(f"basic_auth_users.{name}: not a bcrypt hash ($2a$, $2b$ or $2y$)")
            continue
        if ":" in name:
            errors.append(f"basic_auth_users: user names cannot hold ':' ({name!r})")
            continue
        users[name] = hashed.encode("ascii")
    return users


def _is_bcrypt(hashed: str) -> bool:
    if len(hashed) != 60 or not hashed.startswith(_BCRYPT_PREFIXES) or hashed[6] != "$":
        return False
    cost = hashed[4:6]
    return cost.isdigit() and 4 <= int(cost) <= 31 and hashed.isascii()


def _headers(section: dict[str, Any], errors: list[str]) -> list[tuple[str, str]]:
    headers: list[tuple[str, str]] = []
    for key, value in section.items():
        if key == "http2":  # Go's HTTP/2 switch; this server speaks HTTP/1.1 either way
            if not isinstance(value, bool):
                errors.append("http_server_config.http2: must be true or false")
        elif key != "headers":
            errors.append(f"unknown key 'http_server_config.{key}'")
    declared = section.get("headers") or {}
    if not isinstance(declared, dict):
        errors.append("http_server_config.headers: must be a mapping")
        return headers
    for name, value in declared.items():
        allowed = ALLOWED_HEADERS.get(str(name))
        if allowed is None:
            errors.append(
                f"http_server_config.headers: {name!r} cannot be configured (allowed: "
                f"{', '.join(ALLOWED_HEADERS)})"
            )
        elif not isinstance(value, str) or any(c in value for c in "\r\n"):
            errors.append(f"http_server_config.headers.{name}: must be one line of text")
        elif allowed and value not in allowed:
            errors.append(
                f"http_server_config.headers.{name}: must be one of {', '.join(allowed)}, "
                f"got {value!r}"
            )
        else:
            headers.append((str(name), value))
    return headers


class TLSContextSource:
    """The server's TLS context, rebuilt when a certificate, key or CA file changes.

    Certificates rotate (cert-manager, ACME) without a restart, as with exporter-toolkit; a
    rotation that fails to load is logged and the previous context keeps serving.
    """

    def __init__(self, settings: TLSSettings) -> None:
        self._settings = settings
        self._lock = threading.Lock()
        self._stamp = self._stat()
        self._context = settings.context()

    def _stat(self) -> tuple[tuple[int, int, int], ...]:
        stamps = []
        for file in self._settings.files():
            try:
                info = os.stat(file)
            except OSError:
                stamps.append((0, 0, 0))
            else:
                stamps.append((info.st_mtime_ns, info.st_size, info.st_ino))
        return tuple(stamps)

    def context(self) -> ssl.SSLContext:
        stamp = self._stat()
        if stamp == self._stamp:
            return self._context
        with self._lock:
            if stamp != self._stamp:
                try:
                    self._context = self._settings.context()
                except (OSError, ValueError) as exc:
                    log.error("cannot reload the TLS certificate, keeping the old one: %s", exc)
                else:
                    log.info("reloaded the TLS certificate")
                self._stamp = stamp
            return self._context


class BasicAuth:
    """Checks `Authorization: Basic` against bcrypt hashes, the way exporter-toolkit does.

    An unknown user costs the same bcrypt work as a known one (no user enumeration by timing);
    results are cached by a digest of (user, hash, password) so a scrape does not pay bcrypt
    every time; bcrypt runs one at a time so a password-guessing flood takes one core, not all.
    """

    def __init__(self, users: Mapping[str, bytes]) -> None:
        self._users = {name.encode("utf-8"): hashed for name, hashed in users.items()}
        cost = max((int(h[4:6]) for h in self._users.values()), default=10)
        self._decoy = bcrypt.hashpw(secrets.token_bytes(16), bcrypt.gensalt(cost))
        self._lock = threading.Lock()
        self._cache: dict[bytes, bool] = {}

    def check(self, header: str | None) -> bool:
        """True when the header carries a known user's right password."""
        credentials = _basic_credentials(header)
        if credentials is None:
            return False
        user, password = credentials
        hashed = self._users.get(user)
        known = hashed is not None
        hashed = hashed if hashed is not None else self._decoy
        key = hashlib.sha256(b"\0".join((user, hashed, password))).digest()
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        with self._lock:
            matches = bcrypt.checkpw(password[:_BCRYPT_MAX_PASSWORD], hashed)
        result = known and matches
        if len(self._cache) >= _AUTH_CACHE_SIZE:
            self._cache.clear()
        self._cache[key] = result
        return result


def _basic_credentials(header: str | None) -> tuple[bytes, bytes] | None:
    if not header:
        return None
    scheme, _, encoded = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        # http.server decodes header bytes as ISO-8859-1, so this recovers the bytes sent.
        decoded = base64.b64decode(encoded.strip().encode("latin-1"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        return None
    user, sep, password = decoded.partition(b":")
    return (user, password) if sep else None
