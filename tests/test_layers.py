"""The exporter's import graph has layers: each module imports only modules below its own."""

from __future__ import annotations

import ast
import subprocess
import sys

import pytest

from tests.conftest import ROOT

PACKAGE = ROOT / "exporter"
# Lowest first. A module may import modules of lower layers only.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("__init__", "clock", "errors", "units", "logs"),  # foundations, no I/O
    ("exposition", "models"),  # the text format; the API's shapes, parsed at the edge
    ("snapshot",),  # the lean, immutable rows of one poll
    ("fleet",),  # the fleet's rules: pure
    ("rendering", "store"),  # snapshot -> bytes; the last published bytes
    ("sockets", "body"),  # helpers of the HTTP edges
    ("client", "release_lookup", "webconfig"),  # the edges: upstream, registry, web config
    ("selfmetrics",),  # the exporter's own metrics
    ("poller", "server"),  # the job that owns upstream I/O; the scrape side
    ("config",),  # every option, and the few settings each part takes
    ("cli", "healthcheck"),  # the process: wiring, signals, run modes; the container health check
    ("__main__",),
)
LAYER = {module: rank for rank, layer in enumerate(LAYERS) for module in layer}
PURE = ("snapshot", "fleet", "rendering", "store")
IO_LIBRARIES = {"httpx", "socket", "ssl", "http", "urllib", "subprocess", "yaml", "apscheduler"}


def _imports(module: str) -> list[tuple[str, ast.stmt, bool]]:
    """(imported name, statement, at module level) for each import in ``module``."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text(encoding="utf-8"))
    top = set(map(id, tree.body))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "exporter":
                names = [f"exporter.{alias.name}" for alias in node.names]
            else:
                names = [node.module]
            found += [(name, node, id(node) in top) for name in names]
        elif isinstance(node, ast.Import):
            found += [(alias.name, node, id(node) in top) for alias in node.names]
    return found


def _local(name: str) -> str | None:
    if name == "exporter":
        return "__init__"
    if name.startswith("exporter."):
        local = name.split(".")[1]
        return "__init__" if local == "__version__" else local
    return None


def test_every_module_has_a_layer() -> None:
    modules = {path.stem for path in PACKAGE.glob("*.py")}
    assert modules == set(LAYER), "add a new module to LAYERS, at the layer it belongs to"


@pytest.mark.parametrize("module", sorted(LAYER))
def test_no_module_imports_one_at_or_above_its_own_layer(module: str) -> None:
    for name, node, _ in _imports(module):
        local = _local(name)
        if local is None or local == module:
            continue
        assert LAYER[local] < LAYER[module], (
            f"exporter/{module}.py:{node.lineno} imports {local}, "
            f"which is not below it (layer {LAYER[local]} >= {LAYER[module]})"
        )


def _closure(module: str) -> set[str]:
    seen: set[str] = set()
    todo = [module]
    while todo:
        current = todo.pop()
        for name, _, _ in _imports(current):
            local = _local(name)
            if local is not None and local not in seen:
                seen.add(local)
                todo.append(local)
    return seen


@pytest.mark.parametrize("module", PURE)
def test_the_pure_modules_reach_no_io(module: str) -> None:
    reached = _closure(module) | {module}
    assert not reached & {"config", "client", "release_lookup", "body", "sockets", "webconfig"}
    for local in reached:
        libraries = {name.split(".")[0] for name, _, _ in _imports(local)}
        assert not libraries & IO_LIBRARIES, f"{module} reaches {local}, which imports I/O"


def test_the_store_has_one_home() -> None:
    homes = {
        path.stem
        for path in PACKAGE.glob("*.py")
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.ClassDef)
        and node.name in ("Store", "PublishedExposition", "GzipPrefix")
    }
    assert homes == {"store"}
    for reader in ("poller", "server"):
        assert "exporter.store" in {name for name, _, _ in _imports(reader)}


def test_importing_the_package_changes_no_prometheus_client_state() -> None:
    modules = ", ".join(f"exporter.{m}" for m in sorted(LAYER) if m not in ("__init__", "__main__"))
    code = (
        f"import {modules}\n"
        "import prometheus_client.metrics as m\n"
        "from prometheus_client import REGISTRY\n"
        "assert m._use_created, 'created series were switched off at import'\n"
        "print(len(list(REGISTRY.collect())))\n"
    )
    fresh = subprocess.run(
        [
            sys.executable,
            "-c",
            "from prometheus_client import REGISTRY;print(len(list(REGISTRY.collect())))",
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, cwd=ROOT
    )
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout == fresh.stdout  # nothing registered in the global registry either


def test_the_simulator_is_a_package_of_its_own() -> None:
    assert not (PACKAGE / "simulator.py").exists()
    assert (ROOT / "letta_simulator" / "__init__.py").is_file()


def test_the_cli_alone_starts_the_simulator_and_only_for_the_demo() -> None:
    for module in LAYER:
        for name, node, top_level in _imports(module):
            if name.split(".")[0] == "letta_simulator":
                assert module == "cli" and not top_level, (
                    f"exporter/{module}.py:{node.lineno} imports the simulator"
                )


def test_the_server_reaches_no_http_client() -> None:
    """What serves scrapes never imports what polls: not the client, not the registry lookup,
    not httpx."""
    reached = _closure("server") | {"server"}
    assert not reached & {"client", "release_lookup", "poller"}, sorted(reached)
    for local in reached:
        libraries = {name.split(".")[0] for name, _, _ in _imports(local)}
        assert "httpx" not in libraries, f"the server reaches {local}, which imports httpx"
