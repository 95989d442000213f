"""A simulated Letta Environments API, the test and demo fake of the exporter: see `api`.

Its own package beside the exporter: the exporter imports it only where `--demo` starts it.
"""

from letta_simulator.api import (
    LATEST_RELEASE,
    NEXT_RELEASE,
    RELEASES,
    SimulatedFleet,
    SimulatorHTTPServer,
    main,
    start_simulator,
)

__all__ = [
    "LATEST_RELEASE",
    "NEXT_RELEASE",
    "RELEASES",
    "SimulatedFleet",
    "SimulatorHTTPServer",
    "main",
    "start_simulator",
]
