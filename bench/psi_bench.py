"""What private set intersection costs: :func:`mpc.protocols.psi.private_intersection` between n
party
processes over mutual TLS on loopback, as ``mpc-party`` runs it.

Usage (from the repository root)::

    python bench/psi_bench.py [--parties 2 3] [--ids 100000] [--common 0.8] [--workers W]
                              [--json OUT]

Each party holds ``--ids`` distinct random 15-digit ids, a fraction ``--common`` of them held by
every party, the rest by it alone, in its own order. Reported per party count: wall seconds of
the slowest party (from its call into the PSI to its result: hashing, blinding, traffic, set
logic; TLS setup excluded), ids per second (ids of one party / those seconds), bytes sent by
all parties per id (over all parties' ids, headers included), the leader's and a follower's
bytes, the CPU seconds of the busiest party (the leader; all its threads: on an idle machine
with a core per party this is about the wall time), and the intersection size (checked against
the plaintext intersection). ``--workers`` is the number of threads each party gives
libsodium (default: all CPUs).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import tempfile
import time
import traceback
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from mpc.net.certs import create_deployment  # noqa: E402
from mpc.net.channel import Link, Listener, TLSChannel, dial  # noqa: E402
from mpc.protocols.psi import private_intersection  # noqa: E402
from parties.common import Identity  # noqa: E402

TIMEOUT_S = 600.0


def party_ids(n: int, m: int, common: float, seed: int = 0) -> list[np.ndarray]:
    """Public benchmark inputs (numpy RNG is fine here: nothing secret)."""
    rng = np.random.default_rng(seed)
    k = int(m * common)
    pool = 10**14 + rng.choice(9 * 10**14, size=k + n * (m - k), replace=False)
    out = []
    for i in range(n):
        ids = np.concatenate([pool[:k], pool[k + i * (m - k) : k + (i + 1) * (m - k)]])
        out.append(ids[rng.permutation(m)].astype(np.int64))
    return out


def _child(pid: int, n: int, certs: str, conn: Connection, cfg: dict[str, Any]) -> None:
    """Party ``pid``: listen, report the port, get everyone's ports, dial higher pids, accept
    lower ones, run the PSI, send the result back."""
    links: dict[int, Link] = {}
    try:
        names = [f"p{i}" for i in range(n)]
        ident = Identity.load(Path(certs), names[pid])
        listener = Listener("127.0.0.1", 0, ident.server(), TIMEOUT_S)
        conn.send(("port", listener.port))
        ports = conn.recv()
        deadline = time.monotonic() + 60.0
        for j in range(pid + 1, n):
            links[j] = dial("127.0.0.1", ports[j], ident.client(), names[j], deadline, TIMEOUT_S)
        lower = {names[j]: j for j in range(pid)}
        while len(links) < n - 1:
            waiting = set(lower) - {links[j].peer for j in links if j < pid}
            link = listener.accept(waiting, deadline, "peers")
            links[lower[link.peer]] = link
        listener.close()
        ids = party_ids(n, cfg["ids"], cfg["common"])[pid]
        channel = TLSChannel(pid, n, links, TIMEOUT_S)
        cpu = time.process_time()
        res = private_intersection(channel, ids, names=names, workers=cfg["workers"])
        cpu = time.process_time() - cpu
        check = np.sort(ids[res.rows])
        conn.send(("result", {"pid": pid, "seconds": res.seconds, "size": res.size,
                              "bytes_sent": res.bytes_sent, "rounds": res.rounds,
                              "ascending": bool(np.array_equal(check, ids[res.rows])),
                              "cpu_seconds": cpu}))
    except BaseException:  # noqa: BLE001 - reported to the parent
        conn.send(("error", f"p{pid}:\n{traceback.format_exc()}"))
    finally:
        for link in links.values():
            link.close()
        conn.close()


def run(n: int, m: int, common: float, workers: int) -> dict[str, Any]:
    spawn = mp.get_context("spawn")
    cfg = {"ids": m, "common": common, "workers": workers}
    with tempfile.TemporaryDirectory(prefix="psi_bench_") as tmp:
        create_deployment(Path(tmp), [f"p{i}" for i in range(n)])
        procs, conns = [], []
        for pid in range(n):
            parent_end, child_end = spawn.Pipe()
            proc = spawn.Process(target=_child, args=(pid, n, tmp, child_end, cfg), daemon=True)
            proc.start()
            child_end.close()
            procs.append(proc)
            conns.append(parent_end)
        try:
            ports = []
            for conn in conns:
                if not conn.poll(120):
                    raise RuntimeError("a party did not start")
                kind, value = conn.recv()
                if kind != "port":
                    raise RuntimeError(value)
                ports.append(value)
            for conn in conns:
                conn.send(ports)
            results = []
            for conn in conns:
                if not conn.poll(TIMEOUT_S):
                    raise RuntimeError(f"no result within {TIMEOUT_S:g}s")
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
    truth = party_ids(n, m, common)
    common_ids = truth[0]
    for other in truth[1:]:
        common_ids = np.intersect1d(common_ids, other)
    if any(r["size"] != len(common_ids) or not r["ascending"] for r in results):
        raise RuntimeError(f"wrong intersection: {[r['size'] for r in results]} vs "
                           f"{len(common_ids)}")
    seconds = max(r["seconds"] for r in results)
    total_bytes = sum(r["bytes_sent"] for r in results)
    return {"parties": n, "ids_per_party": m, "common": len(common_ids), "workers": workers,
            "seconds": seconds, "ids_per_s": m / seconds, "bytes_per_id": total_bytes / (n * m),
            "leader_bytes": results[0]["bytes_sent"], "follower_bytes": results[1]["bytes_sent"],
            "rounds": results[0]["rounds"], "per_party_seconds": [r["seconds"] for r in results],
            "per_party_cpu_seconds": [r["cpu_seconds"] for r in results]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parties", type=int, nargs="+", default=[2, 3])
    ap.add_argument("--ids", type=int, default=100_000, help="ids per party")
    ap.add_argument("--common", type=float, default=0.8, help="fraction held by every party")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    load = os.getloadavg()[0]
    print(f"{os.cpu_count()} CPUs, load average {load:.2f} at start; {args.ids} ids per party, "
          f"{args.common:.0%} common; {args.workers} libsodium threads per party; mutual TLS")
    print(f"{'parties':>8}{'common':>9}{'seconds':>9}{'cpu s':>8}{'ids/s':>9}{'B/id':>7}"
          f"{'leader B':>12}{'follower B':>12}{'rounds':>7}")
    rows = []
    for n in args.parties:
        r = run(n, args.ids, args.common, args.workers)
        rows.append(r)
        cpu = max(r["per_party_cpu_seconds"])
        print(f"{n:>8}{r['common']:>9}{r['seconds']:>9.2f}{cpu:>8.2f}{r['ids_per_s']:>9.0f}"
              f"{r['bytes_per_id']:>7.1f}{r['leader_bytes']:>12}{r['follower_bytes']:>12}"
              f"{r['rounds']:>7}", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"meta": {"cpus": os.cpu_count(), "load": load},
                                         "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
