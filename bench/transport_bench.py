"""What a channel costs: round latency and bulk throughput of ``all_to_all`` between 2 parties.

Usage (from the repository root)::

    python bench/transport_bench.py [--transports local tcp tls] [--rounds 2000]
                                    [--sizes-mb 1 8 64] [--reps R] [--json OUT]

Transports:

* ``local``: :class:`mpc.net.transport.LocalChannel`, both parties as threads of this process
  (queues, tensors copied, no serialisation) -- what the simulation and protocol tests use;
* ``tcp``: :class:`mpc.net.channel.TLSChannel`'s framing and interleaved sender over *plain* TCP
  (a :class:`mpc.net.channel.Link` wrapped around an unencrypted socket), 2 processes on loopback
  --
  isolates the cost of TLS;
* ``tls``: :class:`mpc.net.channel.TLSChannel` with mutual TLS 1.3 (certificates from
  ``create_deployment`` in a temporary directory), 2 processes on loopback, as the parties run.

Latency: ``--rounds`` rounds of ``all_to_all`` of a 1-element int64 tensor after 100 warm-up
rounds, each timed on its own (median and 90th percentile, microseconds, party 0's clock).
Throughput: ``all_to_all`` of 1 / 8 / 64 MB tensors (both parties send and receive that much in
the same round), one warm-up then ``--reps`` rounds (default: 50 / 20 / 5); MB/s is the payload
one party sends per second of the median round (1 MB = 10^6 bytes; each tensor is
floor(MB * 10^6 / 8) int64 words).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import socket
import statistics
import sys
import tempfile
import time
import traceback
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from mpc.net.certs import create_deployment  # noqa: E402
from mpc.net.channel import Link, Listener, TLSChannel, dial  # noqa: E402
from mpc.net.transport import Channel, local_channels, run_threads  # noqa: E402
from parties.common import Identity  # noqa: E402

TIMEOUT_S = 300.0
WARMUP_ROUNDS = 100


def default_reps(mb: float) -> int:
    """50 rounds up to 1 MB, 20 up to 8 MB, else 5."""
    return 50 if mb <= 1 else 20 if mb <= 8 else 5


def measure(channel: Channel, rounds: int, sizes_mb: list[float], reps: int | None
            ) -> dict[str, Any]:
    """Run the latency and throughput rounds on one party's channel (both parties call it)."""
    one = [torch.zeros(1, dtype=torch.int64)]
    for _ in range(WARMUP_ROUNDS):
        channel.all_to_all("lat", one)
    lat = []
    for _ in range(rounds):
        start = time.perf_counter()
        channel.all_to_all("lat", one)
        lat.append(time.perf_counter() - start)
    lat.sort()
    out: dict[str, Any] = {
        "latency_us_median": 1e6 * statistics.median(lat),
        "latency_us_p90": 1e6 * lat[min(len(lat) - 1, int(0.9 * len(lat)))],
        "throughput": [],
    }
    gen = torch.Generator().manual_seed(0)
    for mb in sizes_mb:
        words = int(mb * 1e6) // 8
        payload = [torch.randint(-(2**62), 2**62, (words,), dtype=torch.int64, generator=gen)]
        channel.all_to_all("bulk", payload)  # warm-up
        times = []
        for _ in range(reps or default_reps(mb)):
            start = time.perf_counter()
            channel.all_to_all("bulk", payload)
            times.append(time.perf_counter() - start)
        med = statistics.median(times)
        out["throughput"].append({"mb": mb, "reps": len(times), "seconds_median": med,
                                  "mb_per_s": 8 * words / 1e6 / med})
    return out


# -- local ----------------------------------------------------------------------------------------
def run_local(rounds: int, sizes_mb: list[float], reps: int | None) -> dict[str, Any]:
    chans = local_channels(2, TIMEOUT_S)
    results = run_threads([lambda c=c: measure(c, rounds, sizes_mb, reps) for c in chans],
                          TIMEOUT_S * 4)
    return results[0]


# -- two processes --------------------------------------------------------------------------------
def _child(pid: int, mode: str, certs: str, conn: Connection, cfg: dict[str, Any]) -> None:
    """Party ``pid`` of 2: party 1 listens (port reported to the parent), party 0 dials."""
    try:
        torch.set_num_threads(1)
        deadline = time.monotonic() + 60.0
        me, other = f"p{pid}", f"p{1 - pid}"
        link: Link
        if mode == "tls":
            ident = Identity.load(Path(certs), me)
            if pid == 1:
                listener = Listener("127.0.0.1", 0, ident.server(), TIMEOUT_S)
                conn.send(("port", listener.port))
                try:
                    link = listener.accept({other}, deadline, other)
                finally:
                    listener.close()
            else:
                port = conn.recv()
                link = dial("127.0.0.1", port, ident.client(), other, deadline, TIMEOUT_S)
        else:
            if pid == 1:
                server = socket.create_server(("127.0.0.1", 0))
                conn.send(("port", server.getsockname()[1]))
                server.settimeout(60.0)
                raw, _ = server.accept()
                server.close()
            else:
                port = conn.recv()
                raw = socket.create_connection(("127.0.0.1", port), timeout=60.0)
            # Link only uses the socket API, so an unencrypted socket gives the same framing.
            link = Link(raw, other, TIMEOUT_S)  # type: ignore[arg-type]
        channel = TLSChannel(pid, 2, {1 - pid: link}, TIMEOUT_S)
        try:
            result = measure(channel, cfg["rounds"], cfg["sizes_mb"], cfg["reps"])
            channel.all_to_all("done", [torch.zeros(1, dtype=torch.int64)])
        finally:
            channel.close()
        conn.send(("result", result))
    except BaseException:  # noqa: BLE001 - reported to the parent
        conn.send(("error", f"p{pid} ({mode}):\n{traceback.format_exc()}"))
    finally:
        conn.close()


def run_processes(mode: str, rounds: int, sizes_mb: list[float], reps: int | None
                  ) -> dict[str, Any]:
    spawn = mp.get_context("spawn")
    cfg = {"rounds": rounds, "sizes_mb": sizes_mb, "reps": reps}
    with tempfile.TemporaryDirectory(prefix="transport_bench_") as tmp:
        if mode == "tls":
            create_deployment(Path(tmp), ["p0", "p1"])
        procs, conns = [], []
        for pid in (0, 1):
            parent_end, child_end = spawn.Pipe()
            proc = spawn.Process(target=_child, args=(pid, mode, tmp, child_end, cfg),
                                 daemon=True)
            proc.start()
            child_end.close()
            procs.append(proc)
            conns.append(parent_end)
        try:
            if not conns[1].poll(120):
                raise RuntimeError(f"{mode}: listener did not start")
            kind, value = conns[1].recv()
            if kind != "port":
                raise RuntimeError(value)
            conns[0].send(value)
            results = []
            for conn in conns:
                if not conn.poll(TIMEOUT_S * 4):
                    raise RuntimeError(f"{mode}: no result within {TIMEOUT_S * 4:g}s")
                kind, value = conn.recv()
                if kind != "result":
                    raise RuntimeError(value)
                results.append(value)
        finally:
            for proc in procs:
                proc.join(timeout=10)
                if proc.is_alive():
                    proc.terminate()
                    proc.join(timeout=5)
    return results[0]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--transports", nargs="+", choices=["local", "tcp", "tls"],
                    default=["local", "tcp", "tls"])
    ap.add_argument("--rounds", type=int, default=2000, help="latency rounds")
    ap.add_argument("--sizes-mb", type=float, nargs="+", default=[1, 8, 64])
    ap.add_argument("--reps", type=int, default=None, help="throughput rounds per size")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    size_cols = "".join(f"{f'{mb:g} MB MB/s':>14}" for mb in args.sizes_mb)
    print(f"2 parties, {os.cpu_count()} CPUs; latency over {args.rounds} rounds of a 1-element "
          "all_to_all; MB/s = payload one party sends per second (it receives as much)")
    print(f"{'transport':<11}{'lat med us':>12}{'lat p90 us':>12}{size_cols}")
    for mode in args.transports:
        if mode == "local":
            res = run_local(args.rounds, args.sizes_mb, args.reps)
        else:
            res = run_processes(mode, args.rounds, args.sizes_mb, args.reps)
        res["transport"] = mode
        rows.append(res)
        cols = "".join(f"{t['mb_per_s']:>14.0f}" for t in res["throughput"])
        print(f"{mode:<11}{res['latency_us_median']:>12.1f}{res['latency_us_p90']:>12.1f}{cols}",
              flush=True)
    if args.json:
        meta = {"cpus": os.cpu_count(), "rounds": args.rounds, "torch": torch.__version__}
        args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
