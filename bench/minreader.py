"""The consumer benchmark's baseline: the least a reader of a consumer group can do. One
blocking socket, ``XACK`` of the last batch sent together with the next ``XREADGROUP COUNT n``
(n as toss-consume reads), replies parsed by hiredis, nothing else (no handler, no Tick
objects, no health key, no reclaim). What it reaches, alone and two at a time, is what this
machine's Redis and cores allow; the worker's rows are read against it.

    .venv/bin/python bench/minreader.py REDIS_URL STREAM GROUP CONSUMER COUNT [HANDLER]

HANDLER (``module:function``, e.g. ``bench.handlers:parse_every_payload``) is called, in this
one thread, with each batch as ``consumers.tick.Tick`` objects: the same work per entry as a
worker running that handler, without the worker's event loop, threads and bookkeeping.

Reads from the start of STREAM (creating GROUP at 0 if needed) until a read comes back empty.
"""

from __future__ import annotations

import importlib
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import hiredis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from consumers.tick import Tick
from ingestor.resp import pack_command as pack


def main(url: str, key: str, group: str, name: str, count: str, handler: str = "") -> int:
    fn: Callable[[list[Tick]], Any] | None = None
    if handler:
        module, _, attr = handler.partition(":")
        fn = getattr(importlib.import_module(module), attr)
    u = urlparse(url)
    sock = socket.create_connection((u.hostname or "127.0.0.1", u.port or 6379))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    reader = hiredis.Reader()

    def reply() -> Any:
        while (x := reader.gets()) is False:
            data = sock.recv(1 << 18)
            if not data:
                raise ConnectionError("Redis closed the connection")
            reader.feed(data)
        return x

    if u.password:
        sock.sendall(pack("AUTH", u.username or "default", u.password))
        reply()
    sock.sendall(pack("SELECT", (u.path or "/0").lstrip("/") or 0))
    reply()
    sock.sendall(pack("XGROUP", "CREATE", key, group, "0", "MKSTREAM"))
    reply()  # BUSYGROUP when it exists: fine
    read = pack("XREADGROUP", "GROUP", group, name, "COUNT", int(count), "STREAMS", key, ">")
    acks: list[bytes] = []
    n = 0
    while True:
        sock.sendall(pack("XACK", key, group, *acks) + read if acks else read)
        if acks:
            reply()
        got = reply()
        if not got:
            break
        entries = got[0][1]
        if fn is not None:
            fn([Tick("kr", i, f) for i, f in entries])
        acks = [entry[0] for entry in entries]
        n += len(acks)
    print(n)
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:7]))
