"""The sockets an httpx client opened, so that closing the client also ends a request in flight.

httpx's own ``close()`` closes idle connections only: a read blocked on a slow upstream goes on
until its timeout. Shutting the socket down wakes that read at once, so that a shutdown of the
exporter abandons the poll instead of waiting for it.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import weakref
from collections.abc import Callable
from typing import Any

_OPENED = ("connection.connect_tcp.complete", "connection.start_tls.complete")


class OpenSockets:
    """Collects sockets through httpcore's `trace` extension; `shut_down` ends them all."""

    def __init__(self) -> None:
        self._sockets: weakref.WeakSet[socket.socket] = weakref.WeakSet()
        self._lock = threading.Lock()

    def trace(
        self, also: Callable[[str, dict[str, Any]], None] | None = None
    ) -> Callable[[str, dict[str, Any]], None]:
        """A `trace` callback that records each new connection's socket, then calls ``also``."""

        def trace(event: str, info: dict[str, Any]) -> None:
            if event in _OPENED:
                sock = info["return_value"].get_extra_info("socket")
                if sock is not None:
                    with self._lock:
                        self._sockets.add(sock)
            if also is not None:
                also(event, info)

        return trace

    def shut_down(self) -> None:
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            with contextlib.suppress(OSError):  # closed already, or detached by TLS
                sock.shutdown(socket.SHUT_RDWR)
