"""The container image, built from the Dockerfile by podman and run as users run it: read-only,
as its own user, healthy, stopped by SIGTERM, its key from a secret; and the Kubernetes
Deployment of deploy/kubernetes/ under `podman kube play`."""

from __future__ import annotations

import base64
import json
import os
import secrets
import subprocess
import tarfile
import time
import tomllib
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from letta_simulator import start_simulator
from tests.conftest import MEASURED, ROOT, free_port, wait_until
from tests.container import IMAGE, podman, stand_in_base

pytestmark = pytest.mark.slow

VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
KUBERNETES = ROOT / "deploy" / "kubernetes"
STOP_TIMEOUT = 10  # what `docker stop` and `podman stop` wait before SIGKILL


def _revision() -> str:
    result = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    return result.stdout.strip() if result.returncode == 0 else "unknown"


@pytest.fixture(scope="module")
def image() -> Iterator[str]:
    """The project's Dockerfile built on the stand-in base; removed afterwards."""
    base = stand_in_base()
    before = set(_dangling())
    started = time.monotonic()
    # --no-cache: buildah 1.28 cannot bind-mount from a builder stage taken from its cache.
    podman(
        "build",
        "--no-cache",
        "--format",
        "docker",  # HEALTHCHECK is a Docker image field: OCI images drop it
        "--build-arg",
        f"PYTHON_IMAGE={base}",
        "--build-arg",
        f"REVISION={_revision()}",
        "--build-arg",
        f"CREATED={datetime.now(UTC).strftime('%Y-%m-%dT%H:%M:%SZ')}",
        "--tag",
        IMAGE,
        str(ROOT),
        timeout=900,
    )
    took = time.monotonic() - started
    size = int(podman("image", "inspect", "--format", "{{.Size}}", IMAGE).stdout)
    base_size = int(podman("image", "inspect", "--format", "{{.Size}}", base).stdout)
    MEASURED.append(
        f"container image: {size / 1e6:.0f} MB on a {base_size / 1e6:.0f} MB stand-in base "
        f"(Debian bookworm, python3), built in {took:.0f} s"
    )
    try:
        yield IMAGE
    finally:
        # The image, and the builder stage's image this build left untagged (not anyone else's).
        podman("rmi", "--force", IMAGE, *(set(_dangling()) - before), check=False)


def _dangling() -> list[str]:
    listed = podman("images", "--quiet", "--no-trunc", "--filter", "dangling=true").stdout
    return listed.split()


@pytest.fixture
def container_name() -> Iterator[str]:
    name = f"letta-test-{secrets.token_hex(4)}"
    try:
        yield name
    finally:
        podman("rm", "--force", "--time", "0", name, check=False)


def run(image: str, name: str, *args: str, options: tuple[str, ...] = ()) -> None:
    """`podman run -d` as a user would, with the health check's timer off (no systemd here:
    `podman healthcheck run` runs it instead)."""
    podman(
        "run", "--detach", "--name", name, "--health-interval", "disable", *options, image, *args
    )


def inspect(name: str) -> dict[str, Any]:
    document: list[dict[str, Any]] = json.loads(podman("inspect", name).stdout)
    return document[0]


def in_container(name: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return podman("exec", name, *argv, check=False)


def logs(name: str) -> str:
    result = podman("logs", name, check=False)
    return result.stdout + result.stderr


def served(url: str, line: str, name: str) -> str:
    """The exposition at ``url`` once it holds ``line``."""

    def exposition() -> str | None:
        response = httpx.get(f"{url}/metrics", timeout=2)
        return response.text if response.status_code == 200 and line in response.text else None

    text: str = wait_until(exposition, 60, f"{line} at {url} (log: {logs(name)})")
    return text


def healthy(name: str) -> bool:
    return podman("healthcheck", "run", name, check=False).returncode == 0


def test_the_demo_serves_through_a_published_port_read_only_as_its_own_user(
    image: str, container_name: str
) -> None:
    port = free_port()
    run(image, container_name, "--demo", options=("--read-only", "-p", f"127.0.0.1:{port}:8377"))
    url = f"http://127.0.0.1:{port}"
    text = served(url, "letta_environments{", container_name)
    assert f'letta_exporter_build_info{{version="{VERSION}"}} 1.0' in text
    # Its own user, no capabilities, nothing writable outside /tmp.
    ids = in_container(container_name, "python", "-c", "import os; print(os.getuid(), os.getgid())")
    assert ids.stdout.split() == ["10001", "10001"]
    status = in_container(container_name, "cat", "/proc/1/status").stdout
    assert "\nCapEff:\t0000000000000000" in status
    written = in_container(container_name, "python", "-c", "open('/usr/local/x', 'w')")
    assert written.returncode != 0 and "Read-only file system" in written.stderr
    assert inspect(container_name)["HostConfig"]["ReadonlyRootfs"] is True
    wait_until(lambda: healthy(container_name), 30, "the HEALTHCHECK to pass")

    # SIGTERM ends it well within the stop timeout, exit code 0.
    started = time.monotonic()
    podman("stop", "--time", str(STOP_TIMEOUT), container_name)
    took = time.monotonic() - started
    state = inspect(container_name)["State"]
    assert state["ExitCode"] == 0, logs(container_name)
    assert took < STOP_TIMEOUT / 2, f"podman stop took {took:.1f} s"
    assert "shutting down" in logs(container_name)
    MEASURED.append(f"container stop on SIGTERM: {took:.1f} s (stop timeout {STOP_TIMEOUT} s)")


def test_the_health_check_follows_the_configured_listen_address(
    image: str, container_name: str
) -> None:
    port = free_port()
    listen = f"127.0.0.1:{port}"
    run(
        image,
        container_name,
        "--demo",
        f"--web.listen-address={listen}",
        options=("--read-only", "--network", "host"),
    )
    wait_until(
        lambda: httpx.get(f"http://{listen}/-/healthy", timeout=2).status_code == 200,
        60,
        "the exporter on its configured address",
    )
    check = podman("healthcheck", "run", container_name, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    # The check's verdict is about this exporter: stopped, the same check fails.
    podman("kill", "--signal", "STOP", container_name)
    frozen = podman("healthcheck", "run", container_name, check=False, timeout=60)
    podman("kill", "--signal", "CONT", container_name)
    assert frozen.returncode != 0


def test_the_key_comes_from_a_mounted_file_and_is_nowhere_in_the_image(
    image: str, container_name: str, tmp_path: Path
) -> None:
    """The key in a file only the image's user may read, mounted read-only. (A podman secret
    cannot be used with --read-only here: podman 4.3 with runc fails to create its mount point
    in the read-only root file system, "open .../run/secrets/...: read-only file system".)"""
    key = f"sk-let-{secrets.token_hex(16)}"
    sim = start_simulator(fleet_size=25, api_key=key, churn=False)
    key_file = tmp_path / "key"
    key_file.write_text(key)
    os.chown(key_file, 10001, 10001)
    key_file.chmod(0o400)
    try:
        port = free_port()
        run(
            image,
            container_name,
            "--letta.api-key-file=/run/secrets/letta-api-key",
            f"--letta.base-url={sim.url}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--no-version.registry",
            "--no-version.pypi",
            options=(
                "--read-only",
                "--network",
                "host",
                "--volume",
                f"{key_file}:/run/secrets/letta-api-key:ro",
            ),
        )
        success = 'letta_exporter_polls_total{result="success"} 1.0'
        text = served(f"http://127.0.0.1:{port}", success, container_name)
        assert 'letta_exporter_polls_total{result="auth_error"} 0.0' in text
        container = json.dumps(inspect(container_name))
        assert key not in container and key not in logs(container_name)
    finally:
        podman("rm", "--force", "--time", "0", container_name, check=False)
        sim.close()

    # Nor anywhere in the image: its history, labels, environment or any layer's files.
    history = podman("history", "--no-trunc", "--format", "{{.CreatedBy}}", image).stdout
    assert "LETTA_API_KEY" not in history and key not in history
    config = inspect(image)["Config"]
    assert not [e for e in config.get("Env") or [] if e.startswith("LETTA_API_KEY")]
    archive = tmp_path / "image.tar"
    podman("save", "--format", "docker-archive", "--output", str(archive), image, timeout=300)
    with tarfile.open(archive) as outer:
        for member in outer.getmembers():
            handle = outer.extractfile(member)
            if handle is not None:
                assert key.encode() not in handle.read(), member.name


def test_labels_and_version_agree_with_the_exporter(image: str) -> None:
    labels = inspect(image)["Config"]["Labels"]
    shown = podman("run", "--rm", image, "--version").stdout.split()
    assert shown == ["letta-environments-exporter", VERSION]
    assert labels["org.opencontainers.image.version"] == VERSION
    assert labels["org.opencontainers.image.revision"] == _revision()
    assert labels["org.opencontainers.image.title"] == "letta-environments-exporter"
    assert labels["org.opencontainers.image.base.name"].startswith("localhost/letta-stand-in")
    healthcheck = inspect(image)["Healthcheck"]["Test"]
    assert healthcheck == ["CMD", "python", "-m", "exporter.healthcheck"]


def test_the_kubernetes_deployment_runs_under_podman_kube_play(image: str, tmp_path: Path) -> None:
    """The shipped Deployment, its Secret and security context, under `podman kube play`.

    What podman 4.3 cannot do here, and what the test does instead:
    - a Secret in the played file becomes a podman secret holding the YAML, which `secretKeyRef`
      then fails to read; the secret is made beforehand as `kube play` reads it (a JSON map of
      keys to base64 values);
    - no address of the pod's own network may be a test's target here: the test adds
      `hostPort` on 127.0.0.1 to the Deployment's port;
    - nothing reaches the Letta API from here: the test adds `--demo` to the container's args;
    - the liveness probe becomes a health check that runs `curl` inside the image against
      port 0 (podman does not resolve the named port `metrics`), so it can never pass: the
      image has no curl, and the kubelet asks over HTTP itself. The test asks the probes' paths
      over the host port instead.
    """
    deployment = yaml.safe_load((KUBERNETES / "deployment.yaml").read_text())
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == f"letta-environments-exporter:{VERSION}"
    tag = f"localhost/letta-environments-exporter:{VERSION}"
    # The manifest names the release's tag: lend it to the test's image, then give it back.
    owner = podman("image", "inspect", "--format", "{{.Id}}", tag, check=False)
    podman("tag", image, tag)
    port = free_port()
    container["args"] = [*container.get("args", []), "--demo"]
    (metrics,) = container["ports"]
    metrics.update(hostPort=port, hostIP="127.0.0.1")
    played = tmp_path / "deployment.yaml"
    played.write_text(yaml.safe_dump(deployment))

    example = yaml.safe_load((KUBERNETES / "secret.example.yaml").read_text())
    key = f"sk-let-{secrets.token_hex(16)}"
    ref = container["env"][0]["valueFrom"]["secretKeyRef"]
    assert example["metadata"]["name"] == ref["name"] and ref["key"] in example["stringData"]
    secret_file = tmp_path / "secret.json"
    secret_file.write_text(json.dumps({ref["key"]: base64.b64encode(key.encode()).decode()}))
    podman("secret", "rm", ref["name"], check=False)  # left by an interrupted run
    podman("secret", "create", ref["name"], str(secret_file))
    try:
        podman("kube", "play", str(played), timeout=300)
        name = f"{deployment['metadata']['name']}-pod-0-{container['name']}"
        url = f"http://127.0.0.1:{port}"
        for probe in ("livenessProbe", "readinessProbe"):
            path = container[probe]["httpGet"]["path"]
            wait_until(
                lambda path=path: httpx.get(f"{url}{path}", timeout=2).status_code == 200,
                60,
                f"the {probe}'s {path} (log: {logs(name)})",
            )
        details = inspect(name)
        context = container["securityContext"]
        assert details["HostConfig"]["ReadonlyRootfs"] is context["readOnlyRootFilesystem"]
        assert details["Config"]["User"] == f"{pod['securityContext']['runAsUser']}:" + str(
            pod["securityContext"]["runAsGroup"]
        )
        assert "no-new-privileges" in details["HostConfig"]["SecurityOpt"]
        status = in_container(name, "cat", "/proc/1/status").stdout
        assert "\nCapEff:\t0000000000000000" in status  # capabilities: drop: [ALL]
        assert "\nNoNewPrivs:\t1" in status and "\nSeccomp:\t2" in status
        ids = in_container(name, "python", "-c", "import os; print(os.getuid(), os.getgid())")
        assert ids.stdout.split() == ["10001", "10001"]
        assert in_container(name, "touch", "/tmp/x").returncode == 0  # the emptyDir
        assert in_container(name, "touch", "/x").returncode != 0
        served = in_container(name, "python", "-c", "import os; print(os.environ['LETTA_API_KEY'])")
        assert served.stdout.strip() == key  # the Secret's key reached the container
        # The image's own HEALTHCHECK is not the pod's health check; run by hand it passes.
        own = in_container(name, "python", "-m", "exporter.healthcheck")
        assert own.returncode == 0, own.stderr
    finally:
        podman("kube", "down", str(played), check=False)
        podman("secret", "rm", ref["name"], check=False)
        if owner.returncode == 0:
            podman("tag", owner.stdout.strip(), tag)
        else:
            podman("untag", image, tag, check=False)
