# SPDX-License-Identifier: Apache-2.0
"""Who owns the other end of a loopback TCP connection: the uid the kernel's
socket diagnostics (sock_diag, NETLINK_SOCK_DIAG, as `ss -e` shows it) give
for the client's socket, looked up by its address and port.

Every local user connects from 127.0.0.1: the metrics endpoint counts local
clients by user with this (outputs/endpoint.py), so one user's flood cannot take
the slots of another's scrape. One request and one answer a lookup, no dump of
the socket table; None when the client's socket is not in this network
namespace (it came through a bridge, not loopback) or is already gone.
"""

from __future__ import annotations

import ipaddress
import socket
import struct

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST = 0x1
NLMSG_ERROR = 2
INET_DIAG_NOCOOKIE = 0xFFFFFFFF
ALL_STATES = 0xFFFFFFFF
_NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
# struct inet_diag_req_v2: family, protocol, ext, pad, states; then struct inet_diag_sockid:
# sport, dport (big-endian), src[4], dst[4] (network order), if, cookie[2]
_REQ = struct.Struct("=BBBBI")
_PORTS = struct.Struct("!HH")
_IF_COOKIE = struct.Struct("=III")
# struct inet_diag_msg: family, state, timer, retrans, sockid (48 bytes), expires,
# rqueue, wqueue, uid, inode: the uid is 64 bytes in
_UID = struct.Struct("=I")
_UID_AT = 4 + 48 + 12


def _addr16(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bytes:
    return ip.packed.ljust(16, b"\0")


def _plain(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    ip = ipaddress.ip_address(host.split("%", 1)[0])
    if ip.version == 6 and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def loopback_owner(conn: socket.socket) -> int | None:
    """The uid of the client's socket of an accepted loopback connection; None
    for any other connection, or when the kernel does not say."""
    if conn.family not in (socket.AF_INET, socket.AF_INET6):
        return None
    try:
        peer, local = conn.getpeername(), conn.getsockname()
        client, server = _plain(peer[0]), _plain(local[0])
    except (OSError, ValueError):
        return None
    if not client.is_loopback or client.version != server.version:
        return None
    family = socket.AF_INET if client.version == 4 else socket.AF_INET6
    # the client's socket: its source is the client's address, its destination ours
    req = (_REQ.pack(family, socket.IPPROTO_TCP, 0, 0, ALL_STATES) + _PORTS.pack(peer[1], local[1])
           + _addr16(client) + _addr16(server) + _IF_COOKIE.pack(0, INET_DIAG_NOCOOKIE, INET_DIAG_NOCOOKIE))
    msg = _NLMSGHDR.pack(_NLMSGHDR.size + len(req), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST, 1, 0) + req
    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_SOCK_DIAG) as nl:
            nl.settimeout(1.0)
            nl.sendto(msg, (0, 0))
            reply = nl.recv(8192)
    except OSError:
        return None
    if len(reply) < _NLMSGHDR.size + _UID_AT + _UID.size:
        return None
    _length, kind, _flags, _seq, _pid = _NLMSGHDR.unpack_from(reply)
    if kind != SOCK_DIAG_BY_FAMILY:  # NLMSG_ERROR: no such socket here
        return None
    return int(_UID.unpack_from(reply, _NLMSGHDR.size + _UID_AT)[0])
