"""WAN benchmark: our training across network namespaces with a delay relay, and a CrypTen
estimate beside it.

Usage (repository root, as root: it creates network namespaces)::

    python bench/wan_bench.py [--delays 0 5 10 25] [--logistic synthetic10k]
        [--logistic-parties 2 3] [--neural digits-mlp] [--neural-parties 2]
        [--epochs 2] [--neural-epochs 1] [--crypten-steps 5] [--no-crypten]
        [--direct-dealer] [--out-dir bench/results]

**Ours, measured.** Every process runs in its own network namespace on a private bridge
(``tests/e2e/netns_util.NetnsLab``): the dealer, the launcher (coordinator mode) and one per
party, started with the CLI of the README's "Running parties on separate hosts"
(``parties.party --listen/--peer/--dealer/--launcher``). Every party-to-party link and
(unless ``--direct-dealer``) every party-to-dealer link crosses ``tests/e2e/delay_relay.py``,
which holds each chunk for the one-way delay in each direction: names resolve, per namespace,
to the relay's address for that peer. Launcher links are direct (control only). Per delay:
s/epoch counted whole (``(train_seconds + offline_seconds) / epochs``, as
``bench/neural_bench.py``), the mean of the epochs' own log timings, ms/step and rounds per
training step. Workloads: logistic regression on a ``bench/data.py`` workload (standardised,
no intercept, lr 0.5, batch 64/128 as ``bench/train_bench.py``) and the digits models of
``bench/neural_data.py``.

**CrypTen, estimated.** CrypTen 0.4.1 runs on loopback for ``--crypten-steps`` steps of the
same training (``bench/crypten/run_crypten.py`` / ``run_crypten_neural.py``), which count its
communicator calls between the parties and party 0's synchronous TTP round trips per step
(``bench/crypten/comm_counter.py``). Estimate per step at one-way delay d:
``loopback ms/step + (party calls + TTP round trips) x 2d``; see comm_counter.py for why each
call costs at least one round trip (a lower bound for n > 2). Dealer links count for CrypTen
whatever ``--direct-dealer`` says.

Writes ``wan.json`` and ``wan.txt`` into ``--out-dir``. Not part of any test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
E2E = ROOT / "tests" / "e2e"
for p in (ROOT, E2E):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from netns_util import NetnsLab, netns_unavailable_reason  # noqa: E402

from bench.crypten.comm_counter import wan_estimate_ms  # noqa: E402
from bench.data import load, split_rows  # noqa: E402
from bench.neural_bench import (  # noqa: E402
    _write_csv,
    code_label,
    epoch_seconds,
    ours_figures,
    scenario_text,
    write_party_data,
)
from bench.neural_data import MODELS, digits, steps_per_epoch  # noqa: E402
from bench.train_bench import BATCH  # noqa: E402

__all__ = ["crypten_estimates", "render_text", "main"]

MAX_PARTIES = 3
PARTY_PORT, DEALER_PORT, LAUNCHER_PORT = 7000, 7100, 7200
# host numbers in the lab subnet; the relay has one address per party and one for the dealer
LAYOUT: dict[str, list[int]] = {
    "dealer": [10], "launcher": [20], **{f"p{i}": [11 + i] for i in range(MAX_PARTIES)},
    "relay": [31 + i for i in range(MAX_PARTIES + 1)],
}


def logistic_scenario(work: Path, workload: str, parties: int, epochs: int,
                      comparison: str | None = None) -> tuple[str, int]:
    """Data + scenario for logistic regression (train_bench's settings); (name, steps/epoch)."""
    Xtr, ytr, Xte, yte = load(workload)
    names = [f"p{i}" for i in range(parties)]
    features = [f"f{i}" for i in range(Xtr.shape[1])]
    for name, (X, y) in zip(names, split_rows(Xtr, ytr, parties), strict=True):
        _write_csv(work / f"{name}.csv", X, y, features)
    _write_csv(work / "test.csv", Xte, yte, features)
    batch = BATCH[workload]
    toml = [f'name = "wan-{workload}-{parties}"', "seed = 0", "[model]", 'kind = "logistic"',
            "intercept = false", "[train]", f"epochs = {epochs}", f"batch_size = {batch}",
            "learning_rate = 0.5", "[data]", 'partition = "horizontal"', 'label = "target"',
            "standardize = false", "[evaluate]", 'data = "test.csv"', "[network]",
            "timeout_s = 300.0"]
    if comparison is not None:
        toml += ["[protocol]", f'comparison = "{comparison}"']
    for name in names:
        toml += ["[[party]]", f'name = "{name}"', f'data = "{name}.csv"']
    (work / "scenario.toml").write_text("\n".join(toml) + "\n")
    return f"logistic {workload}", steps_per_epoch(Xtr.shape[0], batch)


def neural_scenario(work: Path, model: str, parties: int, epochs: int,
                    comparison: str | None = None) -> tuple[str, int]:
    Xtr, ytr, Xte, yte = digits()
    names = write_party_data(work, Xtr, ytr, Xte, yte, parties)
    m = MODELS[model]
    (work / "scenario.toml").write_text(scenario_text(f"wan-{model}-{parties}", m, names, epochs,
                                                      comparison=comparison))
    return model, steps_per_epoch(Xtr.shape[0], m.batch)


class WanLab:
    """The namespace lab, its certificates, and one run of ours per call of :meth:`run`."""

    def __init__(self, lab: NetnsLab, certs: Path, delay_dealer: bool, timeout: float) -> None:
        self.lab, self.certs, self.delay_dealer, self.timeout = lab, certs, delay_dealer, timeout
        self.env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")

    def _hosts(self, parties: int, relayed: bool) -> dict[str, dict[str, str]]:
        lab = self.lab
        real = {n: lab.ip(n) for n in ["dealer", "launcher", *(f"p{i}" for i in range(parties))]}
        via = {f"p{i}": lab.ip("relay", i) for i in range(parties)}
        dealer_via = lab.ip("relay", MAX_PARTIES) if self.delay_dealer else real["dealer"]
        out = {"launcher": real}
        out["dealer"] = {**real, **via} if relayed else real
        for i in range(parties):
            out[f"p{i}"] = {**real, **via, "dealer": dealer_via} if relayed else real
        return out

    def run(self, work: Path, parties: int, delay_ms: float, steps: int) -> dict[str, Any]:
        lab, names = self.lab, [f"p{i}" for i in range(parties)]
        for host, entries in self._hosts(parties, True).items():
            lab.write_hosts(host, entries)
        scenario, out, logs = work / "scenario.toml", work / f"out-{delay_ms:g}", work / "logs"
        routes = []
        for i, n in enumerate(names):
            routes += ["--route", f"{lab.ip('relay', i)}:{PARTY_PORT}={lab.ip(n)}:{PARTY_PORT}"]
        routes += ["--route", f"{lab.ip('relay', MAX_PARTIES)}:{DEALER_PORT}="
                   f"{lab.ip('dealer')}:{DEALER_PORT}"]
        common = ["--scenario", str(scenario), "--certs", str(self.certs),
                  "--launcher", f"launcher:{LAUNCHER_PORT}"]
        procs: dict[str, subprocess.Popen[bytes]] = {}
        log = {n: logs / f"{n}-{delay_ms:g}.log" for n in ["relay", "launcher", "dealer", *names]}
        try:
            procs["relay"] = relay = lab.popen("relay", [
                sys.executable, str(E2E / "delay_relay.py"), "--delay-ms", str(delay_ms),
                *routes], log["relay"], env=self.env)
            end = time.monotonic() + 30
            while "ready" not in _read(log["relay"]):
                if relay.poll() is not None or time.monotonic() > end:
                    raise RuntimeError(f"delay relay did not start:\n{_read(log['relay'])}")
                time.sleep(0.05)
            start = time.monotonic()
            procs["launcher"] = lab.popen("launcher", [
                sys.executable, "-m", "parties.launch", str(scenario), "--coordinator",
                "--listen", f"0.0.0.0:{LAUNCHER_PORT}", "--certs", str(self.certs), "--out",
                str(out), "--quiet"], log["launcher"], cwd=ROOT, env=self.env)
            procs["dealer"] = lab.popen("dealer", [
                sys.executable, "-m", "parties.dealer", *common, "--listen",
                f"0.0.0.0:{DEALER_PORT}"], log["dealer"], cwd=ROOT, env=self.env)
            for n in names:
                peers = [a for m in names for a in ("--peer", f"{m}={m}:{PARTY_PORT}")]
                procs[n] = lab.popen(n, [
                    sys.executable, "-m", "parties.party", *common, "--name", n, "--listen",
                    f"0.0.0.0:{PARTY_PORT}", *peers, "--dealer", f"dealer:{DEALER_PORT}"],
                    log[n], cwd=ROOT, env=self.env)
            codes: dict[str, int | None] = {}
            for n in ["launcher", "dealer", *names]:
                try:
                    codes[n] = procs[n].wait(timeout=max(1.0, start + self.timeout
                                                         - time.monotonic()))
                except subprocess.TimeoutExpired:
                    codes[n] = None
            wall = time.monotonic() - start
        finally:
            lab.stop(procs.values())
        if any(c != 0 for c in codes.values()) or not (out / "report.json").is_file():
            text = "\n".join(f"----- {n} -----\n{_read(p)[-3000:]}" for n, p in log.items())
            raise RuntimeError(f"run at {delay_ms} ms failed, exit codes {codes}\n{text}")
        accepted = _read(log["relay"]).count("accepted ")
        expected = parties * (parties - 1) // 2 + (parties if self.delay_dealer else 0)
        if accepted < expected:
            raise RuntimeError(f"relay saw {accepted} connections, expected {expected}: "
                               "some links bypassed the delay")
        report = json.loads((out / "report.json").read_text())
        figures = ours_figures(report, epoch_seconds(_read(log["p0"])), steps)
        figures.update(delay_ms=delay_ms, wall_seconds=wall, relay_connections=accepted)
        return figures


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def run_crypten_loopback(kind: str, workload: str, parties: int, steps: int,
                         work: Path, timeout: float) -> dict[str, Any] | None:
    out = work / f"crypten-{workload}-{parties}.json"
    if kind == "logistic":
        cmd = [sys.executable, str(ROOT / "bench" / "crypten" / "run_crypten.py"),
               "--workload", workload]
    else:
        cmd = [sys.executable, str(ROOT / "bench" / "crypten" / "run_crypten_neural.py"),
               "--model", workload]
    cmd += ["--parties", str(parties), "--max-steps", str(steps), "--out", str(out),
            "--timeout", str(timeout)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout + 60)
    if proc.returncode != 0 or not out.exists():
        print(f"crypten run failed: {proc.stderr[-1500:]}", file=sys.stderr)
        return None
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def crypten_estimates(peer: Mapping[str, Any], delays: Sequence[float],
                      steps_per_epoch: int) -> list[dict[str, float]]:
    """CrypTen's estimated ms/step and s/epoch at each one-way delay from its loopback run."""
    rows = []
    for d in delays:
        ms = wan_estimate_ms(float(peer["ms_per_step"]), float(peer["party_calls_per_step"]),
                             float(peer["dealer_round_trips_per_step"]), d)
        rows.append({"delay_ms": d, "ms_per_step": ms, "s_per_epoch": ms * steps_per_epoch / 1e3})
    return rows


HEAD = (f"{'workload':<24}{'n':>2}{'cmp':>8}{'delay':>7}{'ours s/ep':>11}{'ep-log s':>10}"
        f"{'ms/step':>9}{'rounds':>8}{'acc':>7}{'CT est s/ep':>13}{'CT est ms/st':>14}"
        f"{'CT/ours':>9}")


def line(row: Mapping[str, Any], run: Mapping[str, Any], est: Mapping[str, Any] | None) -> str:
    ep = run.get("epoch_log_s_mean")
    ratio = est["s_per_epoch"] / run["s_per_epoch"] if est else None
    return (f"{row['workload']:<24}{row['parties']:>2}{run.get('comparison') or '-':>8}"
            f"{run['delay_ms']:>5g}ms"
            f"{run['s_per_epoch']:>11.2f}{'-' if ep is None else f'{ep:.2f}':>10}"
            f"{run['ms_per_step']:>9.1f}{run['rounds_per_step']:>8.1f}{run['accuracy']:>7.3f}"
            f"{'-' if est is None else format(est['s_per_epoch'], '.1f'):>13}"
            f"{'-' if est is None else format(est['ms_per_step'], '.0f'):>14}"
            f"{'-' if ratio is None else format(ratio, '.0f'):>9}")


def method_text(delay_dealer: bool, crypten_steps: int) -> str:
    dealer = ("party-dealer links delayed too" if delay_dealer
              else "party-dealer links direct")
    return f"""\
ours: measured; one network namespace per process, party-party links through a user-space
  relay adding the one-way delay in each direction ({dealer}; launcher links direct).
  s/epoch = (train_seconds + offline_seconds) / epochs; ep-log s = mean of the epochs' own
  timings (party 0's log); rounds = rounds per training step; cmp = comparison protocol.
CrypTen 0.4.1 (CT): ESTIMATE, not a WAN run: ms/step = loopback ms/step + (communicator calls
  between parties + party 0's synchronous TTP round trips) per step x RTT (RTT = 2 x delay), the
  counts and loopback time measured in a {crypten_steps}-step loopback run of the same training.
  Each call counted as one RTT. gloo's all_reduce (ring: reduce-scatter, then all-gather) takes
  2(n-1) sequential one-way hops: 1 RTT at 2 parties (exact), 2 RTT at 3; a gather takes one
  hop. On the 3-party mixes measured (mostly all_reduce) the estimate stays below the hop count,
  so it favours CrypTen. The 0 ms row compares CrypTen on plain loopback with ours through the
  relay. CT/ours = est s/epoch / ours s/epoch at the same delay."""


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--delays", nargs="+", type=float, default=[0.0, 5.0, 10.0, 25.0],
                    help="one-way delays in ms")
    ap.add_argument("--logistic", nargs="*", default=["synthetic10k"],
                    help="bench/data.py workloads for logistic regression")
    ap.add_argument("--logistic-parties", nargs="+", type=int, default=[2, 3])
    ap.add_argument("--neural", nargs="*", choices=sorted(MODELS), default=["digits-mlp"])
    ap.add_argument("--neural-parties", nargs="+", type=int, default=[2])
    ap.add_argument("--epochs", type=int, default=2, help="epochs per logistic run")
    ap.add_argument("--neural-epochs", type=int, default=1, help="epochs per neural run")
    ap.add_argument("--crypten-steps", type=int, default=5)
    ap.add_argument("--no-crypten", action="store_true")
    ap.add_argument("--comparison", default=None,
                    help="[protocol] comparison of our runs (auto, fss, bitwise; default: unset)")
    ap.add_argument("--direct-dealer", action="store_true",
                    help="do not delay the party-dealer links")
    ap.add_argument("--timeout", type=float, default=900.0, help="per run, seconds")
    ap.add_argument("--out-dir", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--code-label", default=None,
                    help="what code was measured (default: the checkout's git commit)")
    ap.add_argument("--render", type=Path, default=None, metavar="WAN_JSON",
                    help="only rewrite wan.txt in --out-dir from an existing wan.json")
    args = ap.parse_args(argv)
    if args.render is not None:
        args.out_dir.mkdir(parents=True, exist_ok=True)
        (args.out_dir / "wan.txt").write_text(render_text(json.loads(args.render.read_text())))
        return 0
    if max([*args.logistic_parties, *args.neural_parties]) > MAX_PARTIES:
        ap.error(f"at most {MAX_PARTIES} parties")
    reason = netns_unavailable_reason()
    if reason:
        print(f"wan_bench: network namespaces unavailable: {reason}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    jobs = [("logistic", w, n) for w in args.logistic for n in args.logistic_parties]
    jobs += [("neural", m, n) for m in args.neural for n in args.neural_parties]
    rows: list[dict[str, Any]] = []
    print(HEAD, flush=True)
    with tempfile.TemporaryDirectory(prefix="wan-bench-") as tmp, \
            NetnsLab(subnet="10.213.9.0/24") as lab:
        certs = Path(tmp) / "certs"
        subprocess.run([sys.executable, "-m", "parties.certs", str(certs), "dealer", "launcher",
                        *(f"p{i}" for i in range(MAX_PARTIES))], cwd=ROOT, check=True,
                       capture_output=True, timeout=120)
        lab.build(LAYOUT)
        wan = WanLab(lab, certs, not args.direct_dealer, args.timeout)
        for kind, workload, n in jobs:
            work = Path(tmp) / f"{workload}-{n}"
            work.mkdir()
            if kind == "logistic":
                label, steps = logistic_scenario(work, workload, n, args.epochs,
                                                 args.comparison)
            else:
                label, steps = neural_scenario(work, workload, n, args.neural_epochs,
                                               args.comparison)
            peer = None if args.no_crypten else run_crypten_loopback(
                kind, workload, n, args.crypten_steps, work, args.timeout)
            estimates = crypten_estimates(peer, args.delays, steps) if peer else None
            row: dict[str, Any] = {"workload": label, "parties": n, "steps_per_epoch": steps,
                                   "runs": [], "crypten_loopback": peer,
                                   "crypten_estimate": estimates}
            for i, delay in enumerate(args.delays):
                run = wan.run(work, n, delay, steps)
                row["runs"].append(run)
                print(line(row, run, estimates[i] if estimates else None), flush=True)
            rows.append(row)
    runtime = time.perf_counter() - started
    command = "python bench/wan_bench.py " + shlex.join(argv if argv is not None
                                                        else sys.argv[1:])
    data = {"command": command.strip(), "code": args.code_label or code_label(),
            "method": method_text(not args.direct_dealer, args.crypten_steps),
            "runtime_seconds": runtime, "delay_dealer": not args.direct_dealer, "rows": rows}
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "wan.json").write_text(json.dumps(data, indent=2) + "\n")
    (args.out_dir / "wan.txt").write_text(render_text(data))
    return 0


def render_text(data: Mapping[str, Any]) -> str:
    """wan.txt from the contents of wan.json: the table, CrypTen's loopback counts, method."""
    rows = data["rows"]
    body = [line(r, run, (r["crypten_estimate"] or [None] * len(r["runs"]))[i])
            for r in rows for i, run in enumerate(r["runs"])]
    peers = [f"{'workload':<24}{'n':>2}{'loopback ms/step':>18}{'party calls/step':>18}"
             f"{'TTP round trips/step':>22}{'steps timed':>13}  calls by kind"]
    for r in rows:
        c = r.get("crypten_loopback")
        if not c:
            continue
        kinds = ", ".join(f"{k} {v:g}" for k, v in c["calls_per_step_by_kind"].items())
        peers.append(f"{r['workload']:<24}{r['parties']:>2}{c['ms_per_step']:>18.0f}"
                     f"{c['party_calls_per_step']:>18g}{c['dealer_round_trips_per_step']:>22g}"
                     f"{c['steps_timed_per_epoch']:>13}  {kinds}")
    text = (f"{data['command']}\n(code {data.get('code')}; runtime "
            f"{data['runtime_seconds']:.0f} s)\n\n{HEAD}\n")
    text += "\n".join(body) + "\n\n"
    if len(peers) > 1:
        text += "CrypTen 0.4.1 on loopback (the estimate's inputs):\n" + "\n".join(peers) + "\n\n"
    return text + data["method"] + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
