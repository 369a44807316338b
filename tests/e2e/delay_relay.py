"""A TCP relay that adds a fixed one-way delay to every chunk: WAN latency without ``tc netem``.

    python tests/e2e/delay_relay.py --delay-ms 10 \\
        --route 10.213.7.50:7101=10.213.7.12:7000 --route 10.213.7.50:7102=10.213.7.13:7000

Each ``--route LISTEN_HOST:PORT=TARGET_HOST:PORT`` accepts connections on LISTEN and opens one
connection to TARGET per accepted connection; bytes read in either direction are stamped with
their arrival time and written out ``delay`` later, in order (one FIFO per direction). Bandwidth
is not limited; a bounded queue applies back-pressure to the sender. The bytes are forwarded
untouched, so TLS between the ends is unaffected (the relay sees only ciphertext).

The upstream connection is retried until ``--connect-timeout`` while the client waits (its first
bytes stay buffered): a client that connects before the target listens -- a TLS dialer that does
not retry after a failed handshake, for instance -- sees the same thing as without the relay.

Prints ``ready`` on stdout once every route listens and ``accepted LISTEN from PEER`` for each
connection. Runs until killed (SIGTERM/SIGINT).
Standard library only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import time
from collections.abc import Sequence

__all__ = ["Route", "parse_route", "serve", "main"]

CHUNK = 256 * 1024
QUEUE_CHUNKS = 1024  # per direction; a full queue stops reading (back-pressure)


class Route:
    """One listen address forwarded to one target address."""

    def __init__(self, listen: tuple[str, int], target: tuple[str, int]) -> None:
        self.listen = listen
        self.target = target

    def __repr__(self) -> str:
        return f"Route({self.listen[0]}:{self.listen[1]} -> {self.target[0]}:{self.target[1]})"


def _address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"address must be HOST:PORT, got {text!r}")
    return host, int(port)


def parse_route(text: str) -> Route:
    """``LISTEN_HOST:PORT=TARGET_HOST:PORT`` -> :class:`Route`."""
    listen, sep, target = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"route must be LISTEN=TARGET, got {text!r}")
    return Route(_address(listen), _address(target))


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    """Copy reader -> writer, each chunk written ``delay`` seconds after it was read."""
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(QUEUE_CHUNKS)
    loop = asyncio.get_running_loop()

    async def read_side() -> None:
        try:
            while True:
                data = await reader.read(CHUNK)
                await queue.put((loop.time() + delay, data))
                if not data:  # EOF travels with the same delay as the data before it
                    return
        except (ConnectionError, OSError):
            await queue.put((loop.time() + delay, b""))

    async def write_side() -> None:
        while True:
            due, data = await queue.get()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if not data:
                with contextlib.suppress(OSError, RuntimeError):
                    if writer.can_write_eof():
                        writer.write_eof()
                return
            writer.write(data)
            await writer.drain()

    reading = asyncio.create_task(read_side())
    try:
        await write_side()
    finally:
        reading.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await reading


async def _connect(
    target: tuple[str, int], timeout: float
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await asyncio.open_connection(*target, limit=CHUNK)
        except OSError:
            if time.monotonic() >= deadline:
                raise
            await asyncio.sleep(0.05)


async def _handle(
    route: Route,
    delay: float,
    connect_timeout: float,
    c_reader: asyncio.StreamReader,
    c_writer: asyncio.StreamWriter,
) -> None:
    peer = c_writer.get_extra_info("peername")
    print(f"accepted {route.listen[0]}:{route.listen[1]} from {peer[0]}:{peer[1]}", flush=True)
    try:
        t_reader, t_writer = await _connect(route.target, connect_timeout)
    except OSError as exc:
        print(f"delay_relay: {route}: cannot reach target: {exc}", file=sys.stderr, flush=True)
        c_writer.close()
        return
    try:
        await asyncio.gather(
            _pump(c_reader, t_writer, delay),
            _pump(t_reader, c_writer, delay),
            return_exceptions=True,
        )
    finally:
        for w in (c_writer, t_writer):
            w.close()
            with contextlib.suppress(Exception):
                await w.wait_closed()


async def serve(
    routes: Sequence[Route],
    delay: float,
    connect_timeout: float = 30.0,
    ready: asyncio.Event | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Run every route until ``stop`` is set (or forever); ``ready`` is set once listening."""
    servers = []
    for route in routes:

        def handler(
            r: asyncio.StreamReader, w: asyncio.StreamWriter, route: Route = route
        ) -> asyncio.Future[None]:
            return asyncio.ensure_future(_handle(route, delay, connect_timeout, r, w))

        servers.append(
            await asyncio.start_server(handler, *route.listen, limit=CHUNK, reuse_address=True)
        )
    if ready is not None:
        ready.set()
    try:
        await (stop.wait() if stop is not None else asyncio.Event().wait())
    finally:
        for server in servers:
            server.close()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="delay_relay", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--route",
        type=parse_route,
        action="append",
        required=True,
        metavar="LISTEN_HOST:PORT=TARGET_HOST:PORT",
    )
    p.add_argument("--delay-ms", type=float, default=10.0, help="one-way delay per chunk (ms)")
    p.add_argument(
        "--connect-timeout",
        type=float,
        default=30.0,
        help="how long to retry connecting to a target (s)",
    )
    args = p.parse_args(argv)
    if args.delay_ms < 0:
        p.error("--delay-ms must be >= 0")

    async def run() -> None:
        stop, ready = asyncio.Event(), asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        task = asyncio.create_task(
            serve(args.route, args.delay_ms / 1000.0, args.connect_timeout, ready, stop)
        )
        waiter = asyncio.create_task(ready.wait())
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        if ready.is_set():
            print("ready", flush=True)
        else:
            waiter.cancel()
        await task  # re-raises a failure to listen

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
