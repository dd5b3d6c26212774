# SPDX-License-Identifier: Apache-2.0
"""Loopback ports for the servers a run starts (metrics endpoints, Prometheus)."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
