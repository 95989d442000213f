"""The relay: the WebSocket a registered Letta Code listener holds open, and its lease.

It runs on the HTTP server's own socket (one listen address for the API and the relay), with
the sans-I/O protocol of the `websockets` library. The relay pings every `ping_interval`;
Letta Code's WebSocket answers each ping with a pong by itself, and sends its own
`{"type": "ping"}` every 30 s, which the relay answers with `{"type": "pong"}` (without it the
listener drops the socket after 90 s and reconnects). Every frame from the listener refreshes
its row's `lastHeartbeat`. A frozen process (SIGSTOP, a machine cut off) keeps its TCP socket
open and answers nothing: after `lease_timeout` of that silence the relay clears the lease and
closes the socket. A killed process closes its socket: the lease is cleared at once.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from dataclasses import dataclass, field

from websockets.exceptions import InvalidState, ProtocolError
from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.protocol import State
from websockets.server import ServerProtocol

from letta_simulator.listeners import ListenerRegistry

log = logging.getLogger(__name__)
# The protocol's own log: its debug lines carry the handshake's headers, the API key among them.
_protocol_log = logging.getLogger(f"{__name__}.protocol")
_protocol_log.setLevel(logging.WARNING)

RELAY_PATH = "/v1/environments/relay"
_MAX_FRAME = 1 << 20  # a listener's frames are small JSON; a larger one closes the socket
_PONG = json.dumps({"type": "pong"})


@dataclass
class Relay:
    """The relay's settings, and a switch that ends every open socket when the simulator stops."""

    registry: ListenerRegistry
    ping_interval: float
    lease_timeout: float
    _closing: threading.Event = field(default_factory=threading.Event)

    def serve(
        self,
        sock: socket.socket,
        path: str,
        headers: list[tuple[str, str]],
        *,
        connection_id: str,
        authorised: bool,
    ) -> None:
        """Answer the upgrade request already read from ``sock``, then hold the socket until it
        closes, falls silent, loses its lease to a newer socket, or the simulator stops."""
        protocol = ServerProtocol(max_size=_MAX_FRAME, logger=_protocol_log)
        # The protocol parses the handshake itself before any frame: hand it the request as sent.
        head = "".join(f"{name}: {value}\r\n" for name, value in headers)
        protocol.receive_data(f"GET {path} HTTP/1.1\r\n{head}\r\n".encode("latin-1"))
        request = next((e for e in protocol.events_received() if isinstance(e, Request)), None)
        if request is None:  # e.g. a header longer than the protocol takes: it has given up
            body = f"Bad WebSocket handshake: {protocol.handshake_exc}\n".encode()
            head = f"HTTP/1.1 400 Bad Request\r\nContent-Length: {len(body)}\r\n"
            sock.sendall(f"{head}Connection: close\r\n\r\n".encode() + body)
            return
        response = protocol.accept(request)
        lease = None
        if response.status_code == 101:
            if not authorised:
                response = protocol.reject(401, "Unauthorized: missing or invalid API key\n")
            else:
                lease = self.registry.connect(connection_id)
                if lease is None:
                    response = protocol.reject(404, "No registration has this connectionId\n")
        protocol.send_response(response)
        _flush(sock, protocol)
        if lease is None:
            return
        log.info("relay: %s connected", connection_id)
        try:
            self._hold(sock, protocol, connection_id, lease)
        except (OSError, InvalidState, ProtocolError) as exc:
            log.info("relay: %s ended: %s", connection_id, exc)
        finally:
            self.registry.disconnect(lease)
            log.info("relay: %s socket closed", connection_id)

    def close(self) -> None:
        """Stop every socket's loop; each clears its lease as it ends."""
        self._closing.set()

    def _hold(
        self, sock: socket.socket, protocol: ServerProtocol, connection_id: str, lease: int
    ) -> None:
        # How long it waits on its socket before it looks at the clock again: a twentieth of
        # its shortest timing, between 50 ms and half a second (a stop waits for one tick).
        sock.settimeout(min(0.5, max(0.05, min(self.ping_interval, self.lease_timeout) / 20)))
        last_ping = last_heard = time.monotonic()
        while protocol.state is State.OPEN and not self._closing.is_set():
            now = time.monotonic()
            if now - last_heard > self.lease_timeout:
                log.info("relay: %s silent for %.1f s", connection_id, now - last_heard)
                protocol.send_close(1001, "lease timed out")
                _flush(sock, protocol)
                return
            if now - last_ping >= self.ping_interval:
                protocol.send_ping(b"relay")
                last_ping = now
                _flush(sock, protocol)
            try:
                data = sock.recv(65536)
            except TimeoutError:
                continue
            if data:
                protocol.receive_data(data)
            else:
                protocol.receive_eof()
            for frame in protocol.events_received():
                if not isinstance(frame, Frame) or protocol.state is not State.OPEN:
                    continue  # closing: what else the listener sent gets no answer
                if frame.opcode in (Opcode.PING, Opcode.PONG, Opcode.TEXT, Opcode.BINARY):
                    last_heard = time.monotonic()
                    if not self.registry.heartbeat(lease):
                        log.info("relay: %s no longer holds the lease", connection_id)
                        protocol.send_close(1001, "lease lost")
                        continue
                if frame.opcode is Opcode.TEXT:
                    log.debug("relay: %s sent %.200r", connection_id, bytes(frame.data))
                    if _is_ping(bytes(frame.data)):
                        protocol.send_text(_PONG.encode())
            _flush(sock, protocol)
            if not data:
                return
        if protocol.state is State.OPEN:
            protocol.send_close(1001, "relay shutting down")
            _flush(sock, protocol)


def _is_ping(data: bytes) -> bool:
    try:
        message = json.loads(data)
    except ValueError:
        return False
    return isinstance(message, dict) and message.get("type") == "ping"


def _flush(sock: socket.socket, protocol: ServerProtocol) -> None:
    """Send what the protocol has queued; an empty chunk means: close the TCP connection."""
    for chunk in protocol.data_to_send():
        if chunk:
            sock.sendall(chunk)
        else:
            sock.shutdown(socket.SHUT_WR)
