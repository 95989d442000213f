"""The image built and run by a real container engine: Debian's podman with runc.

Docker Hub cannot be reached from the test machines, so the pinned `python:slim` base cannot be
pulled. A stand-in is made from Debian's packages instead: `debootstrap` a minimal bookworm
with `python3`, a virtualenv on `PATH` (so `python` and `pip` behave as in the official image)
and this machine's CA bundle, imported with `podman import`. It is made once per machine and
kept in podman's storage (and its root file system under `.cache/container/`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from tests.conftest import ROOT, require_tool

STAND_IN = "localhost/letta-stand-in-python:bookworm"
IMAGE = "localhost/letta-environments-exporter:test"
CACHE = ROOT / ".cache" / "container"
# What podman needs on this machine, for every command (`kube play` has no flags for it): runc,
# as its default runtime crun refuses the hybrid cgroups; cgroupfs; and limits no higher than
# the machine's, as raising one is not permitted (the pause container of a pod included).
CONTAINERS_CONF = """\
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
"""
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
VENV_PATH = "/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def podman_environment() -> dict[str, str]:
    conf = CACHE / "containers.conf"
    if not conf.exists() or conf.read_text() != CONTAINERS_CONF:
        CACHE.mkdir(parents=True, exist_ok=True)
        conf.write_text(CONTAINERS_CONF)
    return {**os.environ, "CONTAINERS_CONF": str(conf)}


def podman(
    *args: str, check: bool = True, timeout: float = 300, **kwargs: Any
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [require_tool("podman"), *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
        env=podman_environment(),
        **kwargs,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def stand_in_base() -> str:
    """The stand-in for `python:3.11-slim-bookworm`, made where podman does not have it yet."""
    if podman("image", "exists", STAND_IN, check=False).returncode == 0:
        return STAND_IN
    CACHE.mkdir(parents=True, exist_ok=True)
    tarball = CACHE / "bookworm-python.tar"
    if not tarball.exists():
        rootfs = CACHE / "rootfs"
        shutil.rmtree(rootfs, ignore_errors=True)
        debootstrap = require_tool("debootstrap")
        _run(
            [
                debootstrap,
                "--variant=minbase",
                "--include=python3,python3-venv,ca-certificates",
                "bookworm",
                str(rootfs),
                "http://deb.debian.org/debian",
            ],
            "debootstrap",
            timeout=900,
        )
        _run(["chroot", str(rootfs), "python3", "-m", "venv", "/opt/venv"], "python3 -m venv")
        # pip in a build reaches PyPI through this machine's CAs.
        shutil.copy2(CA_BUNDLE, rootfs / "etc/ssl/certs/ca-certificates.crt")
        (rootfs / "opt/venv/pip.conf").write_text(
            "[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n"
        )
        for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
            shutil.rmtree(rootfs / cache, ignore_errors=True)
            (rootfs / cache).mkdir(parents=True)
        partial = tarball.with_suffix(".partial")
        _run(["tar", "-C", str(rootfs), "-cf", str(partial), "."], "tar of the root file system")
        partial.rename(tarball)
        shutil.rmtree(rootfs, ignore_errors=True)
    podman(
        "import",
        "--change",
        f"ENV PATH={VENV_PATH}",
        "--change",
        'CMD ["python"]',
        str(tarball),
        STAND_IN,
    )
    return STAND_IN


def _run(argv: list[str], what: str, timeout: float = 300) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=timeout)
    if result.returncode != 0:
        raise AssertionError(f"{what} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
