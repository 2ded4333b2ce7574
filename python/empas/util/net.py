"""The listening socket of ``empas serve`` and the port check of ``empas dashboard``."""

from __future__ import annotations

import errno
import socket


def listen(host: str, port: int, error: type[Exception], in_use: str) -> socket.socket:
    """A TCP socket bound to host:port and listening (port 0: a free one).

    Raises ``error`` with ``in_use`` (formatted with ``host``, ``port`` and
    ``reason``) when another socket listens there, and with a plain message when
    the host cannot be resolved or bound. SO_REUSEADDR is set as uvicorn and
    Streamlit set it: it allows re-binding a port left in TIME_WAIT, while Linux
    still refuses a port on which another socket listens."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise error(f"cannot resolve host {host!r}: {exc}") from None
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        reason = exc.strerror or str(exc)
        if exc.errno == errno.EADDRINUSE:
            raise error(in_use.format(host=host, port=port, reason=reason)) from None
        raise error(f"cannot listen on {host}:{port}: {reason}") from None
    return sock
