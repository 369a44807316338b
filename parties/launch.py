"""``mpc-launch SCENARIO.toml [--out DIR]``: run a scenario end to end.

By default it creates a deployment CA and certificates, starts the dealer and one process per
party on loopback (each with its own certificate, data file and log), shows per-epoch progress,
receives the parties' shares of the final weights (the only plaintext output), reconstructs
them and writes ``DIR/weights.npz`` and ``DIR/report.json``. With ``--coordinator`` it only
listens for parties and a dealer started elsewhere (containers, other hosts).

On any failure it stops every process it started, prints their logs, writes no weights and
exits non-zero.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mpc.config.audit import AuditResult, canonical, load_ca, verify_statements
from mpc.config.datasets import load_party_test
from mpc.config.scenario import (
    PartyData,
    Scenario,
    common_rows,
    load_party_data,
    load_scenario,
    load_table,
    scenario_digest,
    validate_all,
    weights_to_raw_scale,
)
from mpc.config.streaming import header_feature_names
from mpc.core.errors import ConfigError, MPCError, PeerError, PolicyError, ProtocolError
from mpc.core.fixedpoint import DEFAULT, FixedPoint
from mpc.core.sharing import reconstruct
from mpc.learn.evaluation import check_test_rows, plain_metrics
from mpc.learn.loss import reference_losses
from mpc.learn.model import export_onnx, spec_from_run
from mpc.learn.model import save as save_model
from mpc.learn.reference import metrics, predict, prepare_reference, reference_model
from mpc.net.certs import create_deployment
from mpc.net.channel import Link, Listener, free_ports, parse_address
from mpc.net.transport import check_control
from parties.common import (
    DEALER,
    LAUNCHER,
    Identity,
    check_result_meta,
    job_init,
    setup_logging,
)
from parties.console import Console, choose_mode
from parties.report import write_report

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mpc-launch", description=__doc__)
    p.add_argument("scenario", type=Path)
    p.add_argument("--out", type=Path, default=None, help="output directory (default runs/NAME)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--certs", type=Path, default=None, help="existing deployment certificates")
    p.add_argument(
        "--reference",
        action="store_true",
        help="also train in plaintext (reads every party's file; demo/verification)",
    )
    p.add_argument(
        "--coordinator",
        action="store_true",
        help="do not start processes; wait for parties/dealer started elsewhere",
    )
    p.add_argument("--listen", default=None, help="HOST:PORT for the launcher (coordinator)")
    p.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="overall timeout in seconds, enforced while the run is in progress (default: none; "
        "every wait still fails after the scenario's network.timeout_s of silence)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument(
        "--json", action="store_true", help="one JSON event per line on stdout (for scripts)"
    )
    return p


class Run:
    """State of one launch: child processes, links, output directory."""

    def __init__(self, args: argparse.Namespace, scenario: Scenario, out: Path) -> None:
        self.args = args
        self.scenario = scenario
        self.out = out
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.logs: dict[str, Path] = {}
        self.names = list(scenario.party_names)

    def start_local(self, certs: Path, launcher_port: int) -> None:
        logs = self.out / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        names = [DEALER, *self.names]
        ports = dict(zip(names, free_ports(len(names)), strict=True))
        common = [
            "--scenario",
            str(self.scenario.path),
            "--certs",
            str(certs),
            "--launcher",
            f"127.0.0.1:{launcher_port}",
            "--dealer",
            f"127.0.0.1:{ports[DEALER]}",
        ]
        for item in self.args.overrides:
            common += ["--set", item]
        env = dict(os.environ, OMP_NUM_THREADS="1")
        cmds = {
            DEALER: [
                sys.executable,
                "-m",
                "parties.dealer",
                *common,
                "--listen",
                f"127.0.0.1:{ports[DEALER]}",
            ]
        }
        peers = [f"{nm}=127.0.0.1:{ports[nm]}" for nm in self.names]
        for nm in self.names:
            cmds[nm] = [
                sys.executable,
                "-m",
                "parties.party",
                *common,
                "--name",
                nm,
                "--listen",
                f"127.0.0.1:{ports[nm]}",
            ]
            for peer in peers:
                cmds[nm] += ["--peer", peer]
        root = Path(__file__).resolve().parents[1]
        env["PYTHONPATH"] = os.pathsep.join([str(root), env.get("PYTHONPATH", "")])
        for name, cmd in cmds.items():
            self.logs[name] = logs / f"{name}.log"
            with open(self.logs[name], "wb") as fh:
                self.procs[name] = subprocess.Popen(
                    cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True
                )

    def check_children(self) -> None:
        for name, proc in self.procs.items():
            code = proc.poll()
            if code not in (None, 0):
                raise MPCError(f"{name} exited with code {code}")

    def stop_all(self, grace: float = 5.0) -> None:
        """Stop every child: first give them ``grace`` seconds to notice the failure through
        their own links and exit with their own error (naming the lost peer); then kill."""
        end = time.monotonic() + grace
        while time.monotonic() < end and any(p.poll() is None for p in self.procs.values()):
            time.sleep(0.05)
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass

    def wait_all(self, deadline: float) -> dict[str, int]:
        """Exit codes of the children, which have sent their results and only close down."""
        codes = {}
        for name, proc in self.procs.items():
            try:
                codes[name] = proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                raise MPCError(
                    f"{name} did not exit within {EXIT_GRACE_S:g}s of sending its results"
                ) from None
        return codes

    def print_logs(self) -> None:
        for name, path in self.logs.items():
            print(f"----- log of {name} ({path}) -----", file=sys.stderr)
            try:
                print(path.read_text(errors="replace"), file=sys.stderr)
            except OSError:
                pass


EXIT_GRACE_S = 60.0  # how long the children may take to close down after sending results


def _open_loss(links: dict[str, Link], names: list[str], epoch: int) -> float:
    """Reconstruct epoch ``epoch``'s mean loss from every party's share (each party checked
    the reveal policy and recorded the reveal in its ledger before sending)."""
    shares = []
    for name in names:
        msg = check_control(links[name].recv_json("progress/loss"), {"epoch": int, "share": int},
                            peer=name, op="progress/loss")
        if msg["epoch"] != epoch:
            raise ProtocolError(f"launcher: loss share from {name} is for epoch {msg['epoch']}, "
                                f"expected {epoch}")
        shares.append(torch.tensor([msg["share"]], dtype=torch.int64))
    return float(DEFAULT.decode(reconstruct(shares))[0])


def _collect(
    run: Run, links: dict[str, Link], dealer: Link, console: Console
) -> dict[str, Any]:
    """Progress lines (and the per-epoch loss when the policy allows it), then every party's
    result, statement and the dealer's statistics. Each wait ends only after the scenario's
    timeout of *silence* (the parties send heartbeats while they compute, so an epoch may take
    as long as it takes) or at the overall deadline."""
    names = run.names
    digest = scenario_digest(run.scenario)
    first = links[names[0]]
    epochs = run.scenario.train.epochs
    with_loss = run.scenario.reveal.allows("loss", LAUNCHER)
    losses: list[float] = []
    seconds: list[float] = []
    console.begin()
    while True:
        if with_loss and len(losses) < epochs:
            losses.append(_open_loss(links, names, len(losses) + 1))
        msg = check_control(first.recv_json("progress"), {"epoch": (int, type(None))},
                            peer=names[0], op="progress")
        if msg["epoch"] is None:
            break
        check_control(msg, {"seconds": (int, float)}, peer=names[0], op="progress")
        seconds.append(float(msg["seconds"]))
        console.epoch(int(msg["epoch"]), seconds[-1], msg.get("steps"), msg.get("bytes_sent"),
                      msg.get("rounds"), losses[-1] if with_loss else None)
    console.close()
    results: dict[str, Any] = {"": {"loss": losses if with_loss else None,
                                    "epoch_seconds": seconds, "statements": {}}}
    for name in names:
        meta = check_result_meta(links[name].recv_json("result/meta"), name)
        if meta.get("digest") != digest:
            raise ProtocolError(
                f"launcher: {name} ran a different scenario (digest mismatch): check the "
                "scenario file, seed and --set overrides"
            )
        shapes = [tuple(s) for _, s in [*meta["weights"], *meta["statistics"]]]
        tensors = links[name].recv_tensors("result/weights", shapes)
        results[name] = {"meta": meta, "shares": tensors}
        if meta.get("metrics"):  # evaluate.at = "parties": shares of the joint metrics
            (results[name]["metrics"],) = links[name].recv_tensors(
                "result/metrics", [(len(meta["metrics"]),)]
            )
        results[""]["statements"][name] = links[name].recv_json("audit/statement")
    results[DEALER] = check_control(
        dealer.recv_json("dealer/stats"),
        {"bytes_sent": int, "cpu_seconds": (int, float), "generation_started": (int, float),
         "generate_seconds": (int, float)},
        peer=DEALER, op="dealer/stats",
    )
    if results[DEALER].get("digest") != digest:
        raise ProtocolError("launcher: the dealer ran a different scenario (digest mismatch)")
    results[""]["statements"][DEALER] = dealer.recv_json("audit/statement")
    return results


def _offline_seconds(metas: list[dict[str, Any]], dealer: dict[str, Any]) -> float:
    """Seconds of the dealer's generation that ran before the first party's training clock
    started (the dealer streams during training; only a head start is offline time). Wall
    clocks of different hosts: meaningful to their synchronisation (NTP: milliseconds)."""
    head = min(float(m["train_started"]) for m in metas) - float(dealer["generation_started"])
    return min(max(head, 0.0), float(dealer["generate_seconds"]))


def _training_block(names: list[str], metas: list[dict[str, Any]]) -> dict[str, Any]:
    """Cost of the training steps alone (``mpc.learn.training.TrainCounters``): rounds per step
    (the same for every party), bytes each party sends per step, dealer bytes per step (what
    all parties received from it), the epoch-end range checks apart."""
    first = metas[0]["training"]
    return {
        "steps": first["steps"],
        "rounds_per_step": first["rounds_per_step"],
        "dealer_bytes_per_step": sum(m["training"]["dealer_bytes_per_step"] for m in metas),
        "bytes_sent_per_step": {n: m["training"]["bytes_sent_per_step"]
                                for n, m in zip(names, metas, strict=True)},
        "range_check_rounds_per_epoch": first["range_check_rounds_per_epoch"],
        "range_check_bytes_sent_per_epoch": {
            n: m["training"]["range_check_bytes_sent_per_epoch"]
            for n, m in zip(names, metas, strict=True)},
    }


def _write_audit(out: Path, ca: Path, statements: dict[str, Any], report: dict[str, Any]
                 ) -> AuditResult:
    """File the signed statements, certificates and CA in ``out/audit`` and verify them with
    the same checks as ``mpc-audit verify`` (a record that does not verify fails the run)."""
    audit = out / "audit"
    audit.mkdir(exist_ok=True)
    shutil.copyfile(ca, audit / "ca.pem")
    for name, msg in statements.items():
        if not isinstance(msg, dict) or not isinstance(msg.get("certificate"), str):
            raise ProtocolError(f"launcher: malformed audit statement from {name}")
        (audit / f"{name}.json").write_bytes(canonical(msg.get("document")))
        (audit / f"{name}.pem").write_text(msg["certificate"])
    res = verify_statements(audit, report, load_ca(audit / "ca.pem"), DEALER)
    if not res.ok:
        raise MPCError("the run's audit record does not verify: " + "; ".join(res.problems))
    return res


def _evaluation_data(
    scenario: Scenario, order: list[str]
) -> tuple[np.ndarray, np.ndarray] | None:
    """The [evaluate] file's features in weight order (names as announced by the parties):
    the launcher may hold only this file, not the parties' data."""
    if scenario.evaluate.data is None:
        return None
    table = load_table(scenario.evaluate.data, scenario.data.categories)
    for col in [*order, scenario.data.label]:
        if col not in table.columns:
            raise ConfigError(f"{table.path}: missing column {col!r}")
    x = table.values[:, [table.columns.index(c) for c in order]]
    return x, table.values[:, table.columns.index(scenario.data.label)]


def _party_metrics(
    names: list[str], results: dict[str, Any], fxp: FixedPoint
) -> dict[str, Any]:
    """evaluate.at = "parties": the joint metrics from the parties' shares, and the
    evaluation's cost per party."""
    metas = [results[n]["meta"] for n in names]
    keys = metas[0].get("metrics") or []
    if any(m.get("metrics") != keys for m in metas):
        raise ProtocolError("launcher: the parties announced different metrics")
    values = fxp.decode(reconstruct([results[n]["metrics"] for n in names])).tolist()
    return {
        "metrics": dict(zip(keys, values, strict=True)),
        "evaluation": {"at": "parties", "per_party": [
            dict(m["evaluation"], name=n) for n, m in zip(names, metas, strict=True)]},
    }


def _union_of_tests(scenario: Scenario) -> tuple[np.ndarray, np.ndarray]:
    """All parties' test files joined (rows; vertical: columns) -- --reference only."""
    tests = [load_party_test(scenario, nm, header_feature_names(scenario, nm))
             for nm in scenario.party_names]  # headers only: the training files stay unread
    if scenario.data.partition == "vertical":
        x = np.concatenate([t.features for t in tests], axis=1)
        y = next(t.labels for t in tests if t.labels is not None)
    else:
        x = np.concatenate([t.features for t in tests], axis=0)
        y = np.concatenate([t.labels for t in tests if t.labels is not None])
    return x, y


def _split_model(
    named: dict[str, np.ndarray], names: list[str]
) -> tuple[list[np.ndarray], list[np.ndarray] | None]:
    """(weights, biases or None) from the released tensors w[i] / b[i]; a layer without an
    intercept gets a zero bias when another layer has one."""
    wn = [n for n in names if n.startswith("w")]
    weights = [named[n] for n in wn]
    if not any(n.startswith("b") for n in names):
        return weights, None
    biases = [named.get("b" + n[1:], np.zeros(w.shape[1])) for n, w in zip(wn, weights,
                                                                          strict=True)]
    return weights, biases


def _evaluate(
    scenario: Scenario,
    weights: list[np.ndarray],
    biases: list[np.ndarray] | None,
    reference: bool,
    order: list[str],
) -> dict[str, Any]:
    kind = scenario.model.kind
    out: dict[str, Any] = {}
    ev = _evaluation_data(scenario, order)
    if ev is not None:
        out["metrics"] = metrics(kind, weights, ev[0], ev[1], biases)
    if reference:
        datas = [load_party_data(scenario, nm) for nm in scenario.party_names]
        vertical = scenario.data.partition == "vertical"
        if vertical and scenario.data.align == "psi":  # the true intersection, ascending ids
            rows = common_rows([d.ids for d in datas if d.ids is not None])
            datas = [PartyData(d.features[r], d.feature_names,
                               None if d.labels is None else d.labels[r], None)
                     for d, r in zip(datas, rows, strict=True)]
        x = np.concatenate([d.features for d in datas], axis=1 if vertical else 0)
        if vertical:
            y = next(d.labels for d in datas if d.labels is not None)
        else:
            y = np.concatenate([d.labels for d in datas if d.labels is not None])
        from parties.common import Job

        job = Job(
            scenario.data.partition,
            (),
            x.shape[0],
            x.shape[1],
            scenario.model.outputs,
            False,
            None,
        )
        t = scenario.train
        ref_w, ref_b = reference_model(
            kind,
            x,
            y,
            job_init(scenario, job),
            standardize=scenario.data.standardize,
            intercept=scenario.model.intercept,
            epochs=t.epochs,
            batch_size=t.batch_size,
            learning_rate=t.learning_rate,
            seed=scenario.seed,
            shuffle=t.shuffle,
            outputs=scenario.model.outputs,
        )
        ref_w, ref_b = weights_to_raw_scale(scenario, order, ref_w, ref_b)
        diffs = [float(np.abs(a - b).max()) for a, b in zip(weights, ref_w, strict=True)]
        if biases is not None and ref_b is not None:
            diffs += [float(np.abs(a - b).max()) for a, b in zip(biases, ref_b, strict=True)]
        out["max_abs_weight_diff"] = max(diffs)
        if ev is not None:
            out["reference"] = metrics(kind, ref_w, ev[0], ev[1], ref_b)
            out["max_abs_output_diff"] = float(np.abs(
                predict(kind, weights, ev[0], biases) - predict(kind, ref_w, ev[0], ref_b)).max())
        if scenario.evaluate.at == "parties":
            x_test, y_test = _union_of_tests(scenario)
            out["reference"] = plain_metrics(kind, ref_w, x_test, y_test, ref_b)
            out["plaintext_metrics"] = plain_metrics(kind, weights, x_test, y_test, biases)
        if scenario.reveal.allows("loss", LAUNCHER):
            xp, yp, initp, _, _ = prepare_reference(
                kind, x, y, job_init(scenario, job), standardize=scenario.data.standardize,
                intercept=scenario.model.intercept)
            out["reference_loss"] = reference_losses(
                kind, xp, yp, initp, epochs=t.epochs, batch_size=t.batch_size,
                learning_rate=t.learning_rate, seed=scenario.seed, shuffle=t.shuffle,
                outputs=scenario.model.outputs, intercept=scenario.model.intercept,
            )
    return out


def _run(args: argparse.Namespace) -> int:
    scenario = load_scenario(args.scenario, args.overrides)
    if scenario.evaluate.at == "parties" and not scenario.reveal.allows("metrics", LAUNCHER):
        # Every party refuses too; refusing here starts nothing.
        raise PolicyError(
            f"{scenario.path}: evaluate.at = 'parties' needs [reveal] to allow "
            f"{{what = \"metrics\", to = \"{LAUNCHER}\"}}; nothing was started or opened"
        )
    if not args.coordinator:  # a coordinator holds no party data, only [evaluate]
        validate_all(scenario)  # every file checked before any process or connection exists
        if scenario.evaluate.at == "parties":
            check_test_rows(scenario.model.kind, len(_union_of_tests(scenario)[1]))
    out = args.out or Path("runs") / scenario.name
    out.mkdir(parents=True, exist_ok=True)
    for stale in ("weights.npz", "report.json", "model.pt", "model.onnx", "report.html",
                  "training.png"):
        (out / stale).unlink(missing_ok=True)
    shutil.rmtree(out / "audit", ignore_errors=True)
    log = setup_logging(LAUNCHER)
    certs = args.certs or out / "certs"
    if args.certs is None and not args.coordinator:
        create_deployment(certs, [*scenario.party_names, DEALER, LAUNCHER])
    ident = Identity.load(certs, LAUNCHER)
    # The overall --timeout bounds every wait below (links, accept, exit); default: none.
    overall = None if args.timeout is None else time.monotonic() + args.timeout
    if args.listen:
        host, port = parse_address(args.listen)
    else:
        host, port = scenario.network.launcher_host, scenario.network.launcher_port or 0
    # The launcher waits longer than the parties wait for each other, so that on a stall the
    # parties report the real culprit before the launcher gives up.
    # No heartbeats from the launcher: the parties and the dealer never read from it.
    listener = Listener(
        host, port, ident.server(), 2 * scenario.network.timeout_s + 5, keepalive=False
    )
    run = Run(args, scenario, out)
    links: dict[str, Link] = {}
    ok = False
    try:
        if not args.coordinator:
            run.start_local(certs, listener.port)
        else:
            log.info("coordinator listening on %s:%d", host, listener.port)
        expected = {*scenario.party_names, DEALER}
        connect_deadline = time.monotonic() + scenario.network.connect_timeout_s + 30
        if overall is not None:
            connect_deadline = min(connect_deadline, overall)
        while len(links) < len(expected):
            run.check_children()  # a process that died during start-up fails the run now
            step = min(connect_deadline, time.monotonic() + 0.5)
            try:
                link = listener.accept(expected - set(links), step, "parties and dealer")
            except PeerError:
                if time.monotonic() >= connect_deadline:
                    raise
                continue
            link.deadline = overall
            links[link.peer] = link
        listener.close()  # nobody else may connect once everyone has
        start = time.monotonic()
        console = Console(choose_mode(args.quiet, args.json, sys.stdout), scenario.train.epochs)
        results = _collect(
            run, {n: links[n] for n in scenario.party_names}, links[DEALER], console
        )
        collected = results.pop("")
        exit_by = time.monotonic() + EXIT_GRACE_S
        codes = run.wait_all(exit_by if overall is None else min(exit_by, overall))
        bad = {k: v for k, v in codes.items() if v != 0}
        if bad:
            raise MPCError(f"processes failed: {bad}")
        names = list(scenario.party_names)
        metas = [results[n]["meta"] for n in names]
        for n, m in zip(names, metas, strict=True):
            if (m["weights"], m["frac_bits"], m["statistics"]) != (
                    metas[0]["weights"], metas[0]["frac_bits"], metas[0]["statistics"]):
                raise ProtocolError(
                    f"launcher: {n}'s weight shares (names, shapes, encoding) differ from "
                    f"{names[0]}'s"
                )
        weight_names = [w for w, _ in metas[0]["weights"]]
        stat_names = [w for w, _ in metas[0]["statistics"]]
        decoded = []
        for i, fb in enumerate(metas[0]["frac_bits"]):
            shares = [results[n]["shares"][i] for n in names]
            decoded.append(reconstruct(shares).to(torch.float64).numpy() / 2.0 ** int(fb))
        named = dict(zip(weight_names, decoded, strict=False))
        weights, biases = _split_model(named, weight_names)
        report: dict[str, Any] = {
            "scenario": scenario.name,
            "scenario_digest": scenario_digest(scenario),
            "parties": names,
            "model": {
                "kind": scenario.model.kind,
                "hidden": list(scenario.model.hidden),
                "outputs": scenario.model.outputs,
            },
            "epochs": scenario.train.epochs,
            "comparison": metas[0]["comparison"],
            # comparison = "auto", 2 parties: the round trip that chose it (party 0's median)
            "link_rtt_ms": metas[0].get("link_rtt_ms"),
            "train_seconds": max(float(m["train_seconds"]) for m in metas),
            "offline_seconds": _offline_seconds(metas, results[DEALER]),
            "rounds_per_step": metas[0]["training"]["rounds_per_step"],
            "training": _training_block(names, metas),
            "wall_seconds": time.monotonic() - start,
            "per_party": [
                {
                    "name": n,
                    "bytes_sent": m["stats"]["bytes_sent"],
                    "bytes_received": m["stats"]["bytes_received"],
                    "rounds": m["stats"]["rounds"],
                    "cpu_seconds": float(m.get("cpu_seconds", 0.0)),
                    "per_op": m["stats"]["per_op"],
                    "loss_computation": m.get("loss_stats"),
                }
                for n, m in zip(names, metas, strict=True)
            ],
            "dealer": {
                "bytes_sent": int(results[DEALER]["bytes_sent"]),
                "cpu_seconds": float(results[DEALER].get("cpu_seconds", 0.0)),
                "generate_seconds": float(results[DEALER]["generate_seconds"]),
            },
            "reveals": [
                dict(r, party=n) for n, m in zip(names, metas, strict=True) for r in m["ledger"]
            ],
            "epoch_seconds": collected["epoch_seconds"],
        }
        if collected["loss"] is not None:
            report["loss"] = collected["loss"]
        if scenario.privacy is not None:  # every party states the same public accounting
            blocks = [m.get("privacy") for m in metas]
            if not isinstance(blocks[0], dict) or any(b != blocks[0] for b in blocks):
                raise ProtocolError("launcher: the parties report missing or different "
                                    "privacy accounting")
            report["privacy"] = blocks[0]
        vertical = scenario.data.partition == "vertical"
        if vertical:  # counts only: the ids never leave the parties
            aligns = [m.get("alignment") or {} for m in metas]
            if len({a.get("intersection") for a in aligns}) != 1:
                raise ProtocolError("launcher: the parties report different intersection sizes")
            report["alignment"] = {
                "method": scenario.data.align,
                "intersection": aligns[0].get("intersection"),
                "rows": {n: a.get("rows") for n, a in zip(names, aligns, strict=True)},
                "seconds": max(float(a.get("seconds", 0.0)) for a in aligns),
                "rounds": max(int(a.get("rounds", 0)) for a in aligns),
                "bytes_sent": {n: a.get("bytes_sent") for n, a in zip(names, aligns, strict=True)},
            }
        order = [f for m in (metas if vertical else metas[:1]) for f in m["features"]]
        report["features"] = order
        if scenario.data.bounds:  # public post-processing: the released model takes raw columns
            weights, biases = weights_to_raw_scale(scenario, order, weights, biases)
            first = next(n for n in weight_names if n.startswith("w"))
            named[first] = weights[0]
            named["b" + first[1:]] = biases[0] if biases is not None else named["b" + first[1:]]
            report["bounds"] = {c: [lo, hi] for c, lo, hi in scenario.data.bounds}
        if scenario.evaluate.at == "parties":
            report.update(_party_metrics(names, results, DEFAULT))
        if scenario.data.categorical:
            report["categorical"] = {c: list(v) for c, v in scenario.data.categorical}
        if stat_names:  # only when the policy allowed ("statistics", "launcher")
            values = dict(zip(stat_names, decoded[len(weight_names):], strict=True))
            report["statistics"] = {
                k: dict(zip(order, map(float, v), strict=True)) for k, v in values.items()
            }
        report.update(_evaluate(scenario, weights, biases, args.reference, order))
        if scenario.expect is not None and "metrics" in report:
            got = report["metrics"].get(scenario.expect.metric)
            report["expect"] = {
                "metric": scenario.expect.metric,
                "value": scenario.expect.value,
                "tolerance": scenario.expect.tolerance,
                "got": got,
                "ok": bool(got is not None and scenario.expect.accepts(got)),
            }
        audit = _write_audit(out, ident.paths.ca, collected["statements"], report)
        np.savez(out / "weights.npz", **named)
        released = spec_from_run(
            scenario.model.kind, order, weights, scenario.data.categories, biases
        )
        save_model(released, out / "model.pt")
        export_onnx(released, out / "model.onnx")
        (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        pages = write_report(out, report)
        console.message(
            f"trained {scenario.name} ({scenario.model.kind}, {len(names)} parties) in "
            f"{report['train_seconds']:.2f}s; metrics: {report.get('metrics')}"
            + ("" if "privacy" not in report else
               f"; DP-SGD (epsilon = {report['privacy']['epsilon']:.3g}, delta = "
               f"{report['privacy']['delta']:.0e}, sigma = "
               f"{report['privacy']['noise_multiplier']:.3g}, C = {report['privacy']['clip']:g})")
        )
        if "reference" in report:
            console.message(
                f"plaintext reference: {report['reference']}; max |w - w_ref| = "
                f"{report['max_abs_weight_diff']:.2e}"
            )
        files = [out / "weights.npz", out / "model.pt", out / "model.onnx", out / "report.json",
                 *pages]
        console.message(f"wrote {', '.join(str(p) for p in files)}")
        console.message(
            f"audit record: {out / 'audit'} ({len(audit.statements)} signed statements, "
            f"CA fingerprint {audit.ca_fingerprint}); check with: mpc-audit verify {out}"
        )
        console.event("done", out=str(out), metrics=report.get("metrics"),
                      expect=report.get("expect"), loss=report.get("loss"),
                      privacy=report.get("privacy"),
                      files=[str(p) for p in files], audit_ca_fingerprint=audit.ca_fingerprint)
        ok = True
        return 0
    except MPCError as exc:
        if overall is not None and time.monotonic() >= overall:
            raise MPCError(f"overall timeout of {args.timeout:g}s reached ({exc})") from None
        raise
    finally:
        for link in links.values():  # closing first lets the parties see the end too
            link.close()
        listener.close()
        if not ok:
            # Past the overall deadline nobody waits for the children to notice on their own.
            late = overall is not None and time.monotonic() >= overall
            run.stop_all(grace=0.5 if late else 5.0)
            run.print_logs()


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _run(args)
    except ConfigError as exc:
        print(f"mpc-launch: configuration error: {exc}", file=sys.stderr)
        _json_failure(args, "configuration error", exc)
        return 2
    except MPCError as exc:
        print(f"mpc-launch: run failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        _json_failure(args, "run failed", exc)
        return 1


def _json_failure(args: argparse.Namespace, what: str, exc: MPCError) -> None:
    """With --json, the last stdout line is a ``failed`` event (error messages never carry
    data values)."""
    if args.json:
        Console("json", 0).event("failed", what=what, error=type(exc).__name__, message=str(exc))


if __name__ == "__main__":
    raise SystemExit(main())
