"""Properties: any list payload of the reference's shape renders an exposition that parses.

Payloads hold hostile strings (quotes, backslashes, newlines, braces, non-BMP characters, lone
surrogates, very long values) and some invalid rows; through parse_page -> SnapshotBuilder ->
render_fleet the exposition must parse with prometheus-client's parser, label values must
come back as upstream sent them after the documented bounding, and the counts must add up to
the number of valid rows, each id once. `promtool check metrics` reads a handful of them.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections import Counter
from typing import Any

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from exporter.snapshot import SnapshotBuilder
from tests.conftest import make_config, require_tool
from tests.fleet import parse_page, upstream_row

OBSERVED_AT = 1_800_000_000.0
SHORT, LONG, PATH = 64, 256, 1024  # the bounds of docs/metrics.md, written down independently
ALIASES = {"default": "standard", "bypassPermissions": "unrestricted"}

HOSTILE = st.sampled_from(
    [
        '"',
        "\\",
        "\n",
        "\r",
        "\t",
        "\x00",
        "{",
        "}",
        "=",
        ",",
        " ",
        "\u2028",
        "\ufeff",
        "😀",
        "\U0010ffff",
        "\ud800",
        "\udfff",
        "# HELP x y",
        '"}',
        '\\"',
        "\\n",
        "+Inf",
        "é",
    ]
)
TEXT = st.one_of(
    st.text(alphabet=st.characters(exclude_categories=()), max_size=12),  # surrogates too
    st.lists(HOSTILE, max_size=6).map("".join),
    st.builds(
        lambda piece, count: piece * count,
        st.sampled_from(["x", "é", "😀", '"', "\\", "\n"]),
        st.integers(60, 1100),
    ),
)
IDS = st.one_of(
    st.sampled_from(["env-1", "env-2", "env-3"]),  # the same id on several rows and pages
    TEXT,
    st.builds(lambda tail: "i" * 250 + tail, TEXT),  # ids that differ only past the bound
    st.sampled_from(["dup\ud800", "dup\udbff", "dup?"]),  # ids that differ only in surrogates
)
TIMESTAMPS = st.one_of(
    st.integers(0, 2**53),
    st.floats(min_value=-1e18, max_value=1e18, allow_nan=False),
    st.sampled_from([OBSERVED_AT * 1000, OBSERVED_AT * 1000 + 3_600_000, 1e308, 0]),
)
MODES = st.one_of(
    st.sampled_from(
        ["standard", "acceptEdits", "unrestricted", "strict", "default", "bypassPermissions", ""]
    ),
    TEXT,
)
VERSIONS = st.one_of(st.sampled_from(["0.32.18", "0.32.17", "0.33.0-next.2", "v1.0.0"]), TEXT)
SELF_UPDATE = st.fixed_dictionaries(
    {"supported": st.booleans(), "writable": st.booleans()},
    optional={"install_path": TEXT, "manual_command": TEXT, "reason": st.none() | TEXT},
)
MACHINE = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={
            "architecture": st.sampled_from(["x64", "arm64"]) | TEXT | st.integers(),
            "osName": st.sampled_from(["macOS", "Ubuntu", "Microsoft Windows 11 Pro"]) | TEXT,
            "osVersion": st.sampled_from(["15.1.1", "24.04", "12", "10.0.22631"]) | TEXT,
            "model": st.sampled_from(["Container", "MacBook Pro"]) | TEXT,
            "cpu": TEXT,
            "memoryBytes": st.integers(0, 2**40) | st.floats(0, 1e12) | TEXT,
            "gpus": st.lists(TEXT, max_size=3) | TEXT,
        },
    ),
    st.sampled_from(["a string", 7, ["list"]]),  # wrong-typed: unknown, never an invalid row
)
METADATA = st.fixed_dictionaries(
    {},
    optional={
        "machine": st.none() | MACHINE,
        "gitBranch": st.none() | TEXT,
        "lettaCodeVersion": st.none() | VERSIONS,
        "nodeVersion": st.none() | TEXT,
        "os": st.none() | st.sampled_from(["darwin", "linux", "win32"]) | TEXT,
        "self_update": st.none() | SELF_UPDATE,
        "supported_commands": st.none() | st.lists(TEXT, max_size=3),
        "workingDirectory": st.none() | TEXT,
        "somethingNew": st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
    },
)
VALID_ROWS = st.fixed_dictionaries(
    {
        "id": IDS,
        "connectedAt": st.none() | TIMESTAMPS,
        "connectionId": st.none() | TEXT,
        "connectionName": TEXT,
        "deviceId": TEXT,
        "firstSeenAt": TIMESTAMPS,
        "lastHeartbeat": st.none() | TIMESTAMPS,
        "lastSeenAt": TIMESTAMPS,
        "organizationId": TEXT,
        "podId": st.none() | TEXT,
    },
    optional={
        "apiKeyOwner": st.none() | TEXT,
        "currentMode": st.none() | MODES,
        "metadata": st.none() | METADATA,
        "userId": st.none() | TEXT,
        "capabilities": st.dictionaries(st.text(max_size=5), st.booleans(), max_size=2),
    },
)
CORRUPTIONS: list[tuple[str, Any]] = [
    ("id", 42),
    ("lastSeenAt", "yesterday"),
    ("firstSeenAt", True),
    ("connectionId", 5),
    ("metadata", "not an object"),
    ("metadata", {"self_update": {"supported": "yes", "writable": True}}),
    ("deviceId", None),
    ("lastHeartbeat", [1, 2]),
]


@st.composite
def rows(draw: st.DrawFn) -> tuple[Any, bool]:
    """A row, as a JSON decoder reads it upstream's text, and whether it is valid."""
    # Through JSON once: two generated surrogates that form a pair are one character there.
    row = json.loads(json.dumps(draw(VALID_ROWS)))
    kind = draw(st.integers(0, 9))
    if kind == 0:
        return draw(st.sampled_from(["a string", None, 7, ["list"]])), False
    if kind == 1:
        key, value = draw(st.sampled_from(CORRUPTIONS))
        return {**row, key: value}, False
    if kind == 2:
        row = dict(row)
        del row[draw(st.sampled_from(["id", "connectionName", "lastSeenAt", "organizationId"]))]
        return row, False
    return row, True


def clean(value: str, limit: int) -> str:
    """The documented bounding: at most ``limit`` characters, then valid UTF-8."""
    return value[:limit].encode("utf-8", "replace").decode("utf-8")


def or_unknown(value: str | None, limit: int = SHORT) -> str:
    return clean(value, limit) if value else "unknown"


def expected_host(row: dict[str, Any]) -> dict[str, str]:
    """runtime, arch, os_name and os_version as docs/metrics.md defines them."""
    machine = (row.get("metadata") or {}).get("machine")
    if not isinstance(machine, dict):
        machine = None  # a wrong-typed key costs that key only, a wrong-typed machine all
    device = row["deviceId"]
    if device.startswith("desktop:"):
        runtime = "desktop"
    elif device.startswith("sandbox-"):
        runtime = "sandbox"
    elif machine is None:
        runtime = "unknown"
    else:
        runtime = "container" if machine.get("model") == "Container" else "host"
    machine = machine or {}

    def text(key: str) -> str | None:
        value = machine.get(key)
        return value if isinstance(value, str) else None

    version = re.match(r"\s*v?([0-9]+(?:\.[0-9]+)?)", text("osVersion") or "")
    return {
        "runtime": runtime,
        "arch": or_unknown(text("architecture")),
        "os_name": or_unknown(text("osName")),
        "os_version": clean(version.group(1), SHORT) if version else "unknown",
    }


def expected_info(row: dict[str, Any]) -> dict[str, str]:
    metadata = row.get("metadata") or {}
    mode = row.get("currentMode")
    return {
        "environment_id": clean(row["id"], LONG),
        "device_id": clean(row["deviceId"], LONG),
        "connection_name": clean(row["connectionName"], LONG),
        "os": or_unknown(metadata.get("os")),
        "mode": ALIASES.get(mode, clean(mode, SHORT)) if mode else "unknown",
        "version": or_unknown(metadata.get("lettaCodeVersion")),
        "node_version": or_unknown(metadata.get("nodeVersion")),
        "user_id": clean(row.get("userId") or "", LONG),
        **expected_host(row),
        "working_directory": clean(metadata.get("workingDirectory") or "", PATH),
        "git_branch": clean(metadata.get("gitBranch") or "", LONG),
    }


def _body(page: list[Any], more: bool) -> bytes:
    # ensure_ascii keeps lone surrogates as \\ud800 escapes, as a JSON encoder upstream would
    return json.dumps({"connections": page, "hasNextPage": more}).encode()


def render(pages: list[list[Any]], cap: int) -> tuple[bytes, int, int]:
    """(exposition, environments, dropped) through the exporter's own path."""
    from exporter.rendering import render_fleet

    builder = SnapshotBuilder()
    for number, page in enumerate(pages):
        parsed = parse_page(_body(page, number < len(pages) - 1))
        builder.add(OBSERVED_AT + number, parsed.connections, len(parsed.invalid))
    config = make_config(
        environment_max=cap, environment_extra_labels=("working_directory", "git_branch")
    )
    rendered = render_fleet(builder.build(OBSERVED_AT + len(pages)), config.render_options())
    return rendered.text, rendered.environments, rendered.dropped_environments


PAGES = st.lists(st.lists(rows(), max_size=6), min_size=1, max_size=3)


def test_any_payload_renders_an_exposition_that_parses_round_trips_and_adds_up() -> None:
    expositions: list[bytes] = []

    @settings(
        max_examples=120,
        deadline=None,
        derandomize=True,  # the same examples on every run: CI cannot flake
        phases=[Phase.explicit, Phase.generate],  # shrinking these payloads takes minutes
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(pages=PAGES, cap=st.sampled_from([0, 2, 100_000]))
    def check(pages: list[list[tuple[Any, bool]]], cap: int) -> None:
        first: dict[str, dict[str, Any]] = {}  # the first valid row of each id wins
        invalid = 0
        for page in pages:
            for row, valid in page:
                if valid:
                    first.setdefault(row["id"], row)
                else:
                    invalid += 1
        text, environments, dropped = render([[r for r, _ in page] for page in pages], cap)
        exposition = text.decode("utf-8")  # strict: the bytes are valid UTF-8
        families = {f.name: f for f in text_string_to_metric_families(exposition)}

        counts = sum(s.value for s in families["letta_environments"].samples)
        assert counts == environments == len(first)
        assert sum(s.value for s in families["letta_environments_machine"].samples) == counts
        connected = sum(
            1 for r in first.values() if r["connectionId"]
        )  # a lease is a non-empty connectionId
        assert sum(s.value for s in families["letta_environments_self_update"].samples) == (
            connected
        )
        outdated = sum(s.value for s in families["letta_environments_outdated"].samples)
        assert 0 <= outdated <= len(first)
        buckets = [
            s
            for s in families["letta_environments_heartbeat_age_seconds"].samples
            if s.name.endswith("_bucket")
        ]
        assert [s.value for s in buckets] == sorted(s.value for s in buckets)
        assert buckets[-1].value <= connected

        info = families["letta_environment_info"].samples
        kept = min(cap, len({clean(i, LONG) for i in first}))
        assert len(info) == kept and dropped == len(first) - kept
        ids = Counter(s.labels["environment_id"] for s in info)
        assert all(n == 1 for n in ids.values()), "one series per environment"
        by_id = {}
        for row in first.values():
            by_id.setdefault(clean(row["id"], LONG), expected_info(row))
        for sample in info:
            assert sample.labels == by_id[sample.labels["environment_id"]]
        expositions.append(text)

    check()

    # promtool reads a handful: the biggest and the most escaped of what was generated.
    promtool = require_tool("promtool")
    chosen = (
        sorted(expositions, key=len)[-3:] + sorted(expositions, key=lambda t: t.count(b"\\"))[-3:]
    )
    for text in chosen:
        result = subprocess.run(
            [promtool, "check", "metrics"], input=text, capture_output=True, check=False
        )
        assert result.returncode == 0, result.stdout + result.stderr


def test_a_hand_made_hostile_fleet_passes_promtool() -> None:
    """The worst of each kind in one payload, so promtool sees it on every run."""
    base = {
        "connectedAt": OBSERVED_AT * 1000,
        "connectionId": "c",
        "firstSeenAt": 0,
        "lastHeartbeat": OBSERVED_AT * 1000 + 60_000,  # from the future
        "lastSeenAt": 1e308,
        "organizationId": "o",
        "podId": None,
    }
    hostile = [
        'a"b',
        "back\\slash",
        "new\nline",
        "{brace}",
        "😀\U0010ffff",
        "lone\ud800",
        "é" * 2000,
    ]
    page = [
        {
            **base,
            "id": f"env-{index}-{value}",
            "connectionName": value,
            "deviceId": value,
            "currentMode": value,
            "userId": value,
            "metadata": {
                "os": value,
                "lettaCodeVersion": value,
                "nodeVersion": value,
                "gitBranch": value,
                "workingDirectory": value,
            },
        }
        for index, value in enumerate(hostile)
    ]
    text, environments, _ = render([page], 100_000)
    assert environments == len(hostile)
    families = {f.name: f for f in text_string_to_metric_families(text.decode())}
    info = {
        s.labels["environment_id"]: s.labels for s in families["letta_environment_info"].samples
    }
    assert info['env-0-a"b']["connection_name"] == 'a"b'
    assert info["env-2-new\nline"]["git_branch"] == "new\nline"
    assert info["env-5-lone?"]["mode"] == "lone?"
    assert len(info["env-6-" + "é" * 250]["working_directory"]) == PATH
    result = subprocess.run(
        [require_tool("promtool"), "check", "metrics"], input=text, capture_output=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_ids_that_are_equal_once_bounded_get_one_series_and_count_as_dropped() -> None:
    """Found by the property above: two such ids made two identical series, which Prometheus
    refuses. Both environments are counted; the second has no series of its own."""
    row = upstream_row()
    ids = ["dup\ud800", "dup\udfff", "i" * 256 + "a", "i" * 256 + "b", "plain"]
    text, environments, dropped = render([[{**row, "id": i} for i in ids]], 100_000)
    families = {f.name: f for f in text_string_to_metric_families(text.decode())}
    assert sum(s.value for s in families["letta_environments"].samples) == environments == 5
    series = [s.labels["environment_id"] for s in families["letta_environment_connected"].samples]
    assert sorted(series) == ["dup?", "i" * 256, "plain"] and dropped == 2
