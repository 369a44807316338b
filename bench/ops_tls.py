"""Per-operation benchmark over real processes: n parties + the dealer, mutual TLS on loopback.

Usage (from the repository root)::

    python bench/ops_tls.py [--parties 2 3] [--sizes 1000 10000 100000 1000000]
                            [--ops mul matmul truncate relu sigmoid exp reciprocal]
                            [--reps 5] [--max-size-per-op OP=SIZE ...]
                            [--dealer stream|offline] [--threads T] [--json OUT]
                            [--comparison bitwise|fss]

For every party count the script makes a throw-away deployment (``create_deployment`` in a
temporary directory: one certificate per party plus ``dealer``) and starts n party processes
and one dealer process (``multiprocessing`` with the 'spawn' start method). Each process binds
its listener to port 0 and reports the port to this script, which hands every process the
address book. The parties build the TLS mesh as ``parties/party.py`` does (a party dials the
higher pids and accepts the lower ones), then dial the dealer; the dealer gives each party a
fresh seed and runs the same operations as a dry run (``PartyContext`` with ``DryChannel``,
``Preprocessing.for_dealer`` and a ``LinkSink``), exactly like ``parties/dealer.py``.

Inputs are shared trivially (party 0 holds the encoded values, the others zeros), which is
enough for timing. Every (op, size) is called once as a warm-up and then ``--reps`` times; each
call starts after a one-element barrier round between the parties (not counted). Reported:

* ``seconds``: median over the reps of the slowest party's time for the call;
* ``bytes/party``, ``rounds``: party 0's channel traffic per call (``channel.stats``; all
  parties send the same amounts here);
* ``dealer B``: bytes the dealer sends per call (all parties together);
* ``max err``: max abs error of the last call's result (opened after timing) against float64;
* ``dealer s``: the dealer's own time per call (dry run + sending; in ``stream`` mode this
  includes waiting on back-pressure, so it is not its compute time).

Every process runs torch with ``--threads`` intra-op threads (default 1, as ``parties/launch.py``
sets ``OMP_NUM_THREADS=1``): n + 1 processes sharing a few cores with torch's default thread
count oversubscribe the CPU and make small ops 10-100x slower; ``--threads 0`` keeps torch's
default.

Dealer modes:

* ``stream`` (default, as in a real deployment): the dealer streams material ahead of the
  parties, throttled only by TCP back-pressure, so it competes with the parties for CPU (with
  fewer cores than n + 1 processes this inflates the party times);
* ``offline``: before each call the dealer generates and sends all of that call's material
  while the parties wait and buffer it (each party learns which corrections it will read from
  a local dry run of the op), so ``seconds`` is the online phase alone.

``matmul`` at size s multiplies (m x k) @ (k x m) with m = round(sqrt(s)), k = s // m (each
operand has about s elements). ``--max-size-per-op sigmoid=100000`` caps an op's sizes (sigmoid
is the heaviest: a 17-piece comparison, 16 thresholds per element, ~4 s at 10^6 for 2
parties). Skipped combinations are listed with a note.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from mpc.core.errors import PreprocessingExhausted  # noqa: E402
from mpc.core.fixedpoint import DEFAULT as FXP  # noqa: E402
from mpc.core.preprocessing import Preprocessing  # noqa: E402
from mpc.core.prg import PRG, derive_seed, fresh_seed  # noqa: E402
from mpc.net.certs import create_deployment  # noqa: E402
from mpc.net.channel import Link, Listener, TLSChannel, dial  # noqa: E402
from mpc.protocols import arith as protocols  # noqa: E402
from mpc.protocols import compare, functions  # noqa: E402
from mpc.protocols.context import DryChannel, PartyContext  # noqa: E402
from parties.common import DEALER, Identity, LinkCorrections, LinkSink  # noqa: E402

OPS: dict[str, Callable[..., torch.Tensor]] = {
    "mul": lambda ctx, x, y: protocols.mul(ctx, x, y),
    "matmul": lambda ctx, x, y: protocols.matmul(ctx, x, y),
    "truncate": lambda ctx, x, y: protocols.truncate(ctx, x),
    "relu": lambda ctx, x, y: compare.relu(ctx, x)[0],
    "sigmoid": lambda ctx, x, y: functions.sigmoid(ctx, x),
    "exp": lambda ctx, x, y: functions.exp(ctx, x),
    "reciprocal": lambda ctx, x, y: functions.reciprocal(ctx, y, 10.0),
}
# Plaintext float64 references, for the accuracy check after the timed calls.
REFS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "mul": lambda x, y: x * y,
    "matmul": lambda x, y: x @ y,
    "truncate": lambda x, y: x / FXP.scale,
    "relu": lambda x, y: x.clamp(min=0),
    "sigmoid": lambda x, y: torch.sigmoid(x),
    "exp": lambda x, y: torch.exp(x),
    "reciprocal": lambda x, y: 1 / y,
}
DEFAULT_MAX_SIZE: dict[str, int] = {}
CONNECT_S = 120.0  # deadline for building the mesh
LINK_TIMEOUT_S = 900.0  # receive timeout (large ops with 3+ processes on 2 cores are slow)
READY = "bench/ready"
GO = "bench/go"
BARRIER = "bench/barrier"
CHECK = "bench/check"


# -- inputs ---------------------------------------------------------------------------------------
def matmul_dims(size: int) -> tuple[int, int]:
    """(m, k) with m*k ~ size for (m x k) @ (k x m)."""
    m = max(1, round(math.sqrt(size)))
    return m, max(1, size // m)


def shape_label(op: str, size: int) -> str:
    if op == "matmul":
        m, k = matmul_dims(size)
        return f"{m}x{k}@{k}x{m}"
    return f"{size}"


def make_inputs(op: str, size: int, holder: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Party 0 (``holder``) gets the encoded inputs; other parties and the dealer zeros."""
    if op == "matmul":
        m, k = matmul_dims(size)
        xshape, yshape = (m, k), (k, m)
    else:
        xshape = yshape = (size,)
    if not holder:
        return torch.zeros(xshape, dtype=torch.int64), torch.zeros(yshape, dtype=torch.int64)
    gen = torch.Generator().manual_seed(size)
    if op == "matmul":
        x = (torch.rand(xshape, generator=gen, dtype=torch.float64) - 0.5) / math.sqrt(k)
        y = torch.rand(yshape, generator=gen, dtype=torch.float64) - 0.5
    else:
        x = -torch.rand(xshape, generator=gen, dtype=torch.float64) * 4  # exp wants x <= 0
        y = 1 + torch.rand(yshape, generator=gen, dtype=torch.float64) * 9  # reciprocal: [1, 10]
    return FXP.encode(x), FXP.encode(y)


# -- offline mode: the party buffers one call's material before the call -------------------------
class RecordingSource:
    """Correction source for a party-side dry run: records which corrections this party reads."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, tuple[int, ...]]] = []

    def read(self, op: str, shape: tuple[int, ...]) -> torch.Tensor:
        self.requests.append((op, tuple(shape)))
        return torch.zeros(shape, dtype=torch.int64)


def record_requests(n: int, pid: int, op: str, x: torch.Tensor, y: torch.Tensor,
                    comparison: str = "bitwise") -> list[tuple[str, tuple[int, ...]]]:
    """The (op, shape) of every correction party ``pid`` reads in one call of ``op``.

    Runs the party's program locally on a DryChannel (shapes are public, so the sequence is the
    same for every call).
    """
    recorder = RecordingSource()
    ctx = PartyContext(pid, n, DryChannel(pid, n, LINK_TIMEOUT_S),
                       Preprocessing.for_party(n, pid, fresh_seed(), recorder), dry=True,
                       comparison=comparison)
    OPS[op](ctx, x, y)
    return recorder.requests


class BufferedCorrections:
    """Party-side correction source that reads one call's corrections ahead of the call."""

    def __init__(self, link: Link, pid: int) -> None:
        self.link = LinkCorrections(link, pid)
        self.pid = pid
        self.frames: deque[tuple[str, tuple[int, ...], torch.Tensor]] = deque()

    def drain(self, requests: list[tuple[str, tuple[int, ...]]]) -> None:
        """Read the corrections for ``requests`` into memory, then the dealer's ready marker."""
        for op, shape in requests:
            self.frames.append((op, shape, self.link.read(op, shape)))
        self.link.link.recv_json(READY)

    def read(self, op: str, shape: tuple[int, ...]) -> torch.Tensor:
        if not self.frames:
            raise PreprocessingExhausted(f"P{self.pid}: {op} {shape}: no buffered material")
        got_op, got_shape, value = self.frames.popleft()
        if (got_op, got_shape) != (op, tuple(shape)):
            raise PreprocessingExhausted(
                f"P{self.pid}: buffered {got_op} {got_shape} does not match request {op} {shape}"
            )
        return value


# -- processes ------------------------------------------------------------------------------------
def _pair_prgs(master: bytes, pid: int, n: int) -> dict[int, PRG]:
    return {
        q: PRG(derive_seed(master, f"pair/{min(pid, q)}/{max(pid, q)}"))
        for q in range(n)
        if q != pid
    }


def _child(role: str, pid: int, conn: Connection, cfg: dict[str, Any]) -> None:
    """Entry point of a spawned process: report the listener port, get addresses, run."""
    try:
        if cfg["threads"]:
            torch.set_num_threads(int(cfg["threads"]))
        name = DEALER if role == "dealer" else cfg["names"][pid]
        ident = Identity.load(Path(cfg["certs"]), name)
        listener = Listener("127.0.0.1", 0, ident.server(), LINK_TIMEOUT_S)
        conn.send(("port", listener.port))
        ports: dict[str, int] = conn.recv()
        try:
            if role == "dealer":
                result = _dealer(cfg, ident, listener)
            else:
                result = _party(pid, cfg, ident, listener, ports)
        finally:
            listener.close()
        conn.send(("result", result))
    except BaseException:  # noqa: BLE001 - reported to the parent, which stops everyone
        conn.send(("error", f"{role} {pid}:\n{traceback.format_exc()}"))
    finally:
        conn.close()


def _party(
    me: int, cfg: dict[str, Any], ident: Identity, listener: Listener, ports: dict[str, int]
) -> dict[str, Any]:
    names: list[str] = cfg["names"]
    n = len(names)
    deadline = time.monotonic() + CONNECT_S
    links: dict[int, Link] = {}
    client = ident.client()
    for j in range(me + 1, n):
        links[j] = dial("127.0.0.1", ports[names[j]], client, names[j], deadline, LINK_TIMEOUT_S)
    lower = {names[j]: j for j in range(me)}
    while len(links) < n - 1:
        waiting = set(lower) - {links[j].peer for j in links if j < me}
        link = listener.accept(waiting, deadline, f"parties {sorted(waiting)}")
        links[lower[link.peer]] = link
    dealer = dial("127.0.0.1", ports[DEALER], client, DEALER, deadline, LINK_TIMEOUT_S)
    try:
        seed = bytes.fromhex(dealer.recv_json("dealer/seed")["seed"])
        channel = TLSChannel(me, n, links, LINK_TIMEOUT_S)
        offline = cfg["dealer_mode"] == "offline"
        source = BufferedCorrections(dealer, me) if offline else LinkCorrections(dealer, me)
        ctx = PartyContext(
            me,
            n,
            channel,
            Preprocessing.for_party(n, me, seed, source),
            pair_prgs=_pair_prgs(bytes.fromhex(cfg["master"]), me, n),
            names=tuple(names),
            comparison=cfg["comparison"],
        )
        one = [torch.zeros(1, dtype=torch.int64)]
        out = []
        for op, size, reps in cfg["tasks"]:
            x, y = make_inputs(op, size, holder=me == 0)
            times, sent, rounds = [], [], []
            requests = record_requests(n, me, op, x, y, cfg["comparison"]) if offline else []
            for rep in range(reps + 1):
                if isinstance(source, BufferedCorrections):
                    dealer.send_json(GO, {"op": op, "size": size, "rep": rep})
                    source.drain(requests)
                channel.all_to_all(BARRIER, one)
                before_b, before_r = channel.stats.bytes_sent, channel.stats.rounds
                start = time.perf_counter()
                result = OPS[op](ctx, x, y)
                elapsed = time.perf_counter() - start
                if rep == 0:
                    continue  # warm-up
                times.append(elapsed)
                sent.append(channel.stats.bytes_sent - before_b)
                rounds.append(channel.stats.rounds - before_r)
            # Accuracy check (not timed): open the last result to every party.
            opened = result.clone()
            for (t,) in channel.all_to_all(CHECK, [result]).values():
                opened += t
            err = None
            if me == 0:
                ref = REFS[op](FXP.decode(x), FXP.decode(y))
                err = float((FXP.decode(opened) - ref).abs().max())
            out.append({"op": op, "size": size, "times": times,
                        "bytes_sent": statistics.median(sent),
                        "rounds": statistics.median(rounds), "max_abs_err": err})
        channel.all_to_all(BARRIER, one)  # nobody hangs up while a peer may still be reading
        dealer.send_json("dealer/done", {"name": names[me]})
        return {"pid": me, "tasks": out}
    finally:
        for link in links.values():
            link.close()
        dealer.close()


def _dealer(cfg: dict[str, Any], ident: Identity, listener: Listener) -> dict[str, Any]:
    names: list[str] = cfg["names"]
    n = len(names)
    deadline = time.monotonic() + CONNECT_S
    links: dict[int, Link] = {}
    try:
        while len(links) < n:
            waiting = {nm for i, nm in enumerate(names) if i not in links}
            link = listener.accept(waiting, deadline, f"parties {sorted(waiting)}")
            links[names.index(link.peer)] = link
        seeds = {}
        for pid, link in sorted(links.items()):
            seeds[pid] = fresh_seed()
            link.send_json("dealer/seed", {"seed": seeds[pid].hex()})
        sink = LinkSink(links)
        ctx = PartyContext(
            0,
            n,
            DryChannel(0, n, LINK_TIMEOUT_S),
            Preprocessing.for_dealer(n, seeds, sink),
            pair_prgs=_pair_prgs(bytes.fromhex(cfg["master"]), 0, n),
            names=tuple(names),
            dry=True,
            comparison=cfg["comparison"],
        )
        offline = cfg["dealer_mode"] == "offline"
        out = []
        for op, size, reps in cfg["tasks"]:
            x, y = make_inputs(op, size, holder=False)
            times, sent = [], []
            for rep in range(reps + 1):
                if offline:
                    for link in links.values():
                        link.recv_json(GO)
                before = sink.bytes_sent
                start = time.perf_counter()
                OPS[op](ctx, x, y)
                sink.flush()
                elapsed = time.perf_counter() - start
                if offline:
                    for link in links.values():
                        link.send_json(READY, {"rep": rep})
                if rep:
                    times.append(elapsed)
                    sent.append(sink.bytes_sent - before)
            out.append({"op": op, "size": size, "times": times,
                        "bytes_sent": statistics.median(sent)})
        for link in links.values():
            link.recv_json("dealer/done")
        return {"pid": "dealer", "tasks": out}
    finally:
        for link in links.values():
            link.close()


# -- driver ---------------------------------------------------------------------------------------
@contextlib.contextmanager
def omp_threads(threads: int) -> Iterator[None]:
    """Set OMP_NUM_THREADS for processes started inside the block (0: leave it alone)."""
    saved = os.environ.get("OMP_NUM_THREADS")
    if threads:
        os.environ["OMP_NUM_THREADS"] = str(threads)
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = saved


def run_parties(
    n: int, tasks: list[tuple[str, int, int]], dealer_mode: str, threads: int, timeout: float,
    comparison: str = "bitwise",
) -> list[dict[str, Any]]:
    """Spawn n parties + dealer, run the task list, return one row per task."""
    spawn = mp.get_context("spawn")
    names = [f"p{i}" for i in range(n)]
    with tempfile.TemporaryDirectory(prefix="ops_tls_") as tmp:
        create_deployment(Path(tmp), [*names, DEALER])
        cfg = {"names": names, "certs": tmp, "tasks": tasks, "dealer_mode": dealer_mode,
               "master": fresh_seed().hex(), "threads": threads, "comparison": comparison}
        roles = [("party", i) for i in range(n)] + [("dealer", n)]
        procs, conns = [], []
        with omp_threads(threads):  # the spawned processes inherit the environment
            for role, pid in roles:
                parent_end, child_end = spawn.Pipe()
                proc = spawn.Process(target=_child, args=(role, pid, child_end, cfg), daemon=True)
                proc.start()
                child_end.close()
                procs.append(proc)
                conns.append(parent_end)
        try:
            ports: dict[str, int] = {}
            for (role, pid), conn in zip(roles, conns, strict=True):
                if not conn.poll(CONNECT_S):
                    raise RuntimeError(f"{role} {pid} did not start within {CONNECT_S:g}s")
                kind, value = conn.recv()
                if kind != "port":
                    raise RuntimeError(value)
                ports[DEALER if role == "dealer" else names[pid]] = value
            for conn in conns:
                conn.send(ports)
            results: dict[int, Any] = {}
            deadline = time.monotonic() + timeout
            pending = {i: c for i, c in enumerate(conns)}
            while pending:
                ready = wait(list(pending.values()), max(0.0, deadline - time.monotonic()))
                if not ready:
                    raise RuntimeError(f"n={n}: no result within {timeout:g}s")
                for conn in ready:
                    i = next(k for k, c in pending.items() if c is conn)
                    try:
                        kind, value = conn.recv()
                    except EOFError:
                        raise RuntimeError(f"{roles[i][0]} {roles[i][1]} died") from None
                    if kind == "error":
                        raise RuntimeError(value)
                    results[i] = value
                    del pending[i]
        finally:
            for proc in procs:
                proc.join(timeout=5)
            for proc in procs:
                if proc.is_alive():
                    proc.terminate()
                    proc.join(timeout=5)
    parties = [results[i]["tasks"] for i in range(n)]
    dealer = results[n]["tasks"]
    rows = []
    for k, (op, size, reps) in enumerate(tasks):
        per_rep_max = [max(p[k]["times"][r] for p in parties) for r in range(reps)]
        rows.append({
            "op": op, "parties": n, "elements": size, "shape": shape_label(op, size),
            "reps": reps, "dealer_mode": dealer_mode,
            "seconds": statistics.median(per_rep_max),
            "seconds_p0": statistics.median(parties[0][k]["times"]),
            "bytes_per_party": parties[0][k]["bytes_sent"],
            "max_bytes_per_party": max(p[k]["bytes_sent"] for p in parties),
            "rounds": parties[0][k]["rounds"],
            "dealer_bytes": dealer[k]["bytes_sent"],
            "dealer_seconds": statistics.median(dealer[k]["times"]),
            "max_abs_err": parties[0][k]["max_abs_err"],
        })
    return rows


def _parse_caps(items: list[str]) -> dict[str, int]:
    caps = dict(DEFAULT_MAX_SIZE)
    for item in items:
        op, sep, value = item.partition("=")
        if not sep or op not in OPS:
            raise SystemExit(f"--max-size-per-op wants OP=SIZE with OP in {list(OPS)}: {item!r}")
        caps[op] = int(float(value))
    return caps


def _fmt_bytes(b: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if b >= scale:
            return f"{b / scale:.2f} {unit}"
    return f"{b:.0f} B"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parties", type=int, nargs="+", default=[2, 3])
    ap.add_argument("--sizes", type=lambda s: int(float(s)), nargs="+",
                    default=[1_000, 10_000, 100_000, 1_000_000])
    ap.add_argument("--ops", nargs="+", choices=list(OPS), default=list(OPS))
    ap.add_argument("--reps", type=int, default=5, help="timed calls after one warm-up")
    ap.add_argument("--max-size-per-op", nargs="*", default=[], metavar="OP=SIZE",
                    help=f"skip larger sizes for OP (default {DEFAULT_MAX_SIZE})")
    ap.add_argument("--dealer", choices=["stream", "offline"], default="stream",
                    help="stream ahead like parties/dealer.py, or per call before it starts")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads per process (default 1; 0: torch's default)")
    ap.add_argument("--timeout", type=float, default=7200.0, help="per party count (s)")
    ap.add_argument("--comparison", choices=["bitwise", "fss"], default="bitwise",
                    help="comparison backend of every context (relu, sigmoid, exp, ...)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.reps < 1:
        ap.error("--reps must be at least 1")
    caps = _parse_caps(args.max_size_per_op)
    print(f"dealer mode: {args.dealer}; {args.reps} reps after 1 warm-up; {os.cpu_count()} CPUs, "
          f"{args.threads or 'default'} torch threads per process; "
          "seconds = median over reps of the slowest party")
    head = (f"{'op':<11}{'n':>3}{'elements':>10}{'shape':>21}{'seconds':>11}{'bytes/party':>14}"
            f"{'rounds':>8}{'dealer B':>12}{'dealer s':>10}{'max err':>10}")
    rows: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    for n in args.parties:
        tasks = []
        for size in args.sizes:
            for op in args.ops:
                if size > caps.get(op, size):
                    skipped.append({"op": op, "parties": n, "elements": size,
                                    "note": f"skipped: above --max-size-per-op {caps[op]}"})
                    continue
                tasks.append((op, size, args.reps))
        if not tasks:
            continue
        t0 = time.perf_counter()
        got = run_parties(n, tasks, args.dealer, args.threads, args.timeout, args.comparison)
        print(f"\n{n} parties ({time.perf_counter() - t0:.1f}s incl. start-up)")
        print(head)
        for r in got:
            print(f"{r['op']:<11}{n:>3}{r['elements']:>10}{r['shape']:>21}"
                  f"{r['seconds']:>11.4f}{_fmt_bytes(r['bytes_per_party']):>14}"
                  f"{r['rounds']:>8.0f}{_fmt_bytes(r['dealer_bytes']):>12}"
                  f"{r['dealer_seconds']:>10.4f}{r['max_abs_err']:>10.1e}", flush=True)
        rows += got
    for s in skipped:
        print(f"note: {s['op']} n={s['parties']} {s['elements']}: {s['note']}")
    if args.json:
        meta = {"dealer_mode": args.dealer, "reps": args.reps, "threads": args.threads,
                "comparison": args.comparison,
                "cpus": os.cpu_count(), "torch": torch.__version__}
        args.json.write_text(json.dumps({"meta": meta, "ops": rows, "skipped": skipped},
                                        indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
