"""``mpc-party``: one organisation's process. Loads only its own dataset, joins the mesh over
mutual TLS, trains jointly, and sends its shares of the final weights to the launcher -- the only
plaintext-bound output, checked against the scenario's reveal policy first.

Start-up (all with receive timeouts): listen; accept lower pids, dial higher pids; dial the
dealer and the launcher; agree on the scenario digest and shapes; align the rows of a vertical
partition (``data.align = "psi"``: private set intersection over the party links, see
:mod:`mpc.protocols.psi`; ``"ordered"``: compare a keyed hash of the id column); receive this
party's
dealer seed; party 0 sends the dealer the public job shape (rows after alignment).

The data file is read in chunks (:class:`mpc.config.streaming.PartyStream`): checked once at
start, then summarised, encoded, masked, written to disk and sent chunk by chunk
(``mpc.learn.dataprep``, ``mpc.learn.masked``; a PSI alignment reorders it through a temporary
file, ``parties.align``), so the process's memory does not depend on the file's size.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import os
import time
from dataclasses import replace
from typing import Any

import torch

from mpc.config.audit import build_statement, sign_statement, utc_now
from mpc.config.datasets import load_party_test
from mpc.config.policy import RevealPolicy
from mpc.config.policy import RevealRule as PolicyRule
from mpc.config.privacy import plan, report_block
from mpc.config.scenario import (
    PartyData,
    Scenario,
    load_scenario,
    scenario_digest,
)
from mpc.config.streaming import PartyStream
from mpc.core.errors import ConfigError, MPCError, ProtocolError
from mpc.core.preprocessing import Preprocessing
from mpc.core.sharing import pair_prgs
from mpc.learn.evaluation import check_test_rows, metric_names, require_metrics_reveal
from mpc.learn.training import TrainCounters
from mpc.net.channel import Link, Listener, TLSChannel, dial, parse_address
from mpc.net.transport import KIND_TENSORS, check_control, control_hex
from mpc.protocols.context import PartyContext
from parties.align import AlignedStream, align_rows
from parties.common import (
    DEALER,
    LAUNCHER,
    Identity,
    Job,
    LinkCorrections,
    add_common_args,
    agree_comparison,
    log_failure,
    run_evaluation,
    run_job,
    run_process,
    setup_logging,
)

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mpc-party", description=__doc__)
    add_common_args(p)
    p.add_argument("--name", required=True, help="this party's name (as in the scenario)")
    p.add_argument(
        "--peer",
        action="append",
        default=[],
        metavar="NAME=HOST:PORT",
        help="address of another party (default: the scenario's host/port)",
    )
    return p


def _addresses(args: argparse.Namespace, scenario: Scenario) -> dict[str, tuple[str, int]]:
    out: dict[str, tuple[str, int]] = {}
    for p in scenario.parties:
        if p.port is not None:
            out[p.name] = (p.host, p.port)
    for item in args.peer:
        name, sep, addr = item.partition("=")
        if not sep:
            raise ConfigError(f"--peer must be NAME=HOST:PORT, got {item!r}")
        out[name] = parse_address(addr)
    return out


def _connect_mesh(
    me: int,
    names: list[str],
    ident: Identity,
    listener: Listener,
    addrs: dict[str, tuple[str, int]],
    deadline: float,
    timeout: float,
) -> dict[int, Link]:
    links: dict[int, Link] = {}
    client = ident.client()
    for j in range(me + 1, len(names)):
        if names[j] not in addrs:
            raise ConfigError(f"no address for party {names[j]!r} (use --peer)")
        host, port = addrs[names[j]]
        links[j] = dial(host, port, client, names[j], deadline, timeout)
    lower = {names[j]: j for j in range(me)}
    while len(links) < len(names) - 1:
        waiting = set(lower) - {links[j].peer for j in links if j < me}
        link = listener.accept(waiting, deadline, f"parties {sorted(waiting)}")
        links[lower[link.peer]] = link
    return links


def _hello(
    me: int, names: list[str], links: dict[int, Link], scenario: Scenario,
    data: PartyStream,
) -> tuple[dict[int, Any], dict[int, bytes]]:
    """Exchange public metadata with every peer and check that it agrees; returns the peers'
    metadata and one common seed per pair (drawn by the lower pid, sent over the pair's link).

    With ``data.align = "ordered"`` (vertical) the metadata carries an HMAC-SHA256 of the
    whole id column under a key party 0 draws for this run: equal hashes mean the same ids in
    the same order. It is a consistency check, not a privacy mechanism (party 0 knows the key,
    so it can confirm a guess of another party's whole id list). With ``"psi"`` nothing derived
    from the ids is sent here; :func:`_align` runs the PSI after this exchange.
    """
    # Party 0 picks the key for the keyed id hash and the pairwise seeds go lower -> higher.
    key = os.urandom(32) if me == 0 else b""
    pair_seeds: dict[int, bytes] = {}
    for j, link in sorted(links.items()):
        if me < j:
            pair_seeds[j] = os.urandom(32)
            link.send_json("hello/seeds", {"pair": pair_seeds[j].hex(), "key": key.hex()})
    for j, link in sorted(links.items()):
        if j < me:
            msg = link.recv_json("hello/seeds")
            pair_seeds[j] = control_hex(msg, "pair", 32, peer=names[j], op="hello/seeds")
            if j == 0:
                key = control_hex(msg, "key", 32, peer=names[j], op="hello/seeds")
    ordered = scenario.data.partition == "vertical" and scenario.data.align == "ordered"
    ids_hash = (
        hmac.new(key, data.ids.astype("<i8").tobytes(), hashlib.sha256).hexdigest()
        if data.ids is not None and ordered
        else None
    )
    mine: dict[str, Any] = {
        "name": names[me],
        "digest": scenario_digest(scenario),
        "rows": len(data.features),
        "features": list(data.feature_names),
        "ids": ids_hash,
        "labels": data.has_labels,
    }
    for link in links.values():
        link.send_json("hello/meta", mine)
    metas: dict[int, Any] = {me: mine}
    for j, link in sorted(links.items()):
        metas[j] = check_control(
            link.recv_json("hello/meta"),
            {"name": str, "digest": str, "rows": int, "features": list,
             "ids": (str, type(None)), "labels": bool},
            peer=names[j], op="hello/meta",
        )
        other = metas[j]
        if other.get("name") != names[j]:
            raise ProtocolError(f"{names[me]}: peer {names[j]} announced name {other.get('name')}")
        if other.get("digest") != mine["digest"]:
            raise ProtocolError(
                f"{names[me]}: {names[j]} runs a different scenario (digest mismatch): "
                "check the scenario file, seed and --set overrides"
            )
        if scenario.data.partition == "horizontal" and other.get("features") != mine["features"]:
            raise ProtocolError(
                f"{names[me]}: {names[j]} has different feature columns "
                f"({len(other.get('features') or [])} vs {len(data.feature_names)})"
            )
        if ordered:
            if other.get("rows") != mine["rows"]:
                raise ProtocolError(
                    f"{names[me]}: {names[j]} has {other.get('rows')} rows, we have {mine['rows']}"
                )
            if other.get("ids") != ids_hash:
                raise ProtocolError(
                    f"{names[me]}: row ids differ from {names[j]}'s (keyed hash mismatch): "
                    "the parties' rows are not aligned"
                )
    return metas, pair_seeds




def _job(scenario: Scenario, names: list[str], metas: dict[int, Any], aligned: int) -> Job:
    n = len(names)
    vertical = scenario.data.partition == "vertical"
    if vertical:
        blocks = tuple(len(metas[i]["features"]) for i in range(n))
        rows = aligned
        label_party: int | None = names.index(scenario.data.label_party or "")
    else:
        blocks = tuple(int(metas[i]["rows"]) for i in range(n))
        rows = sum(blocks)
        label_party = None
    features = sum(blocks) if vertical else len(metas[0]["features"])
    kind = scenario.model.kind
    return Job(
        scenario.data.partition,
        blocks,
        rows,
        features,
        scenario.model.outputs,
        kind in ("softmax", "mlp"),
        label_party,
    )


def _test_hello(
    me: int, links: dict[int, Link], scenario: Scenario, test: PartyData, job: Job
) -> Job:
    """evaluate.at = "parties": exchange the public shape of every party's test file (rows;
    vertical: the same rows, checked by a keyed hash of the test ids under a fresh key from
    party 0) and add the joint test layout to the job."""
    vertical = scenario.data.partition == "vertical"
    if me == 0:
        key = os.urandom(32)
        for link in links.values():
            link.send_json("hello/test-key", {"key": key.hex()})
    else:
        key = bytes.fromhex(links[0].recv_json("hello/test-key")["key"])
    ids_hash = (
        hmac.new(key, test.ids.astype("<i8").tobytes(), hashlib.sha256).hexdigest()
        if vertical and test.ids is not None
        else None
    )
    mine: dict[str, Any] = {"rows": len(test.features), "ids": ids_hash}
    for link in links.values():
        link.send_json("hello/test", mine)
    rows: dict[int, int] = {me: len(test.features)}
    for j, link in sorted(links.items()):
        other = link.recv_json("hello/test")
        rows[j] = int(other.get("rows") or 0)
        if rows[j] < 1:
            raise ProtocolError(f"{scenario.party_names[me]}: {scenario.party_names[j]} "
                                "announced no test rows")
        if vertical and (rows[j] != rows[me] or other.get("ids") != ids_hash):
            raise ProtocolError(
                f"{scenario.party_names[me]}: test rows differ from "
                f"{scenario.party_names[j]}'s ({rows[j]} vs {rows[me]} rows, or a keyed "
                "hash mismatch of the test ids): the parties' test rows are not aligned"
            )
    blocks = job.blocks if vertical else tuple(rows[i] for i in range(len(rows)))
    check_test_rows(scenario.model.kind, rows[me] if vertical else sum(blocks))
    return replace(job, test_blocks=blocks, test_rows=rows[me] if vertical else sum(blocks))


def _run(args: argparse.Namespace) -> int:
    started = utc_now()
    torch.set_num_threads(max(1, args.threads))
    scenario = load_scenario(args.scenario, args.overrides)
    names = list(scenario.party_names)
    if args.name not in names:
        raise ConfigError(f"{args.scenario}: no party named {args.name!r}")
    me = names.index(args.name)
    log = setup_logging(args.name)
    # The file is checked, prepared and masked straight from disk, chunk by chunk
    # (mpc.config.streaming): memory independent of its size.
    stream = PartyStream(scenario, args.name)
    data: PartyStream | AlignedStream = stream
    rules = tuple(PolicyRule(r.what, r.to) for r in scenario.reveal.rules)
    policy = RevealPolicy(args.name, rules)
    test = None
    if scenario.evaluate.at == "parties":  # refuse before connecting, let alone opening
        require_metrics_reveal(policy, LAUNCHER)
        test = load_party_test(scenario, args.name, data.feature_names)
    timeout = args.timeout or scenario.network.timeout_s
    deadline = time.monotonic() + scenario.network.connect_timeout_s
    ident = Identity.load(args.certs, args.name)
    listen = (
        parse_address(args.listen)
        if args.listen
        else (scenario.parties[me].host, scenario.parties[me].port or 0)
    )
    listener = Listener(listen[0], listen[1], ident.server(), timeout)
    links: dict[int, Link] = {}
    dealer = launcher = None
    try:
        links = _connect_mesh(
            me, names, ident, listener, _addresses(args, scenario), deadline, timeout
        )
        listener.close()  # nobody else may connect once the mesh is up
        dealer_addr = (
            parse_address(args.dealer)
            if args.dealer
            else (scenario.network.dealer_host, scenario.network.dealer_port or 0)
        )
        launcher_addr = (
            parse_address(args.launcher)
            if args.launcher
            else (scenario.network.launcher_host, scenario.network.launcher_port or 0)
        )
        dealer = dial(*dealer_addr, ident.client(), DEALER, deadline, timeout)
        launcher = dial(*launcher_addr, ident.client(), LAUNCHER, deadline, timeout)
        log.info("all %d parties connected; dealer and launcher connected", len(names))
        metas, pair_seeds = _hello(me, names, links, scenario, stream)
        alignment = None
        if scenario.data.partition == "vertical":
            data, alignment = align_rows(me, names, links, scenario, stream, policy, metas,
                                         timeout)
        job = _job(scenario, names, metas, len(data.features))
        if test is not None:
            job = _test_hello(me, links, scenario, test, job)
        comparison, rtt_ms = agree_comparison(me, names, links, scenario.protocol)
        if rtt_ms is not None:
            log.info("link round trip %.3f ms: %s comparisons (comparison = auto)", rtt_ms,
                     comparison)
        dealer.send_json(
            "dealer/hello",
            {
                "name": args.name,
                "digest": scenario_digest(scenario),
                "job": job.as_dict() if me == 0 else None,
                "comparison": comparison,
            },
        )
        seed_msg = dealer.recv_json("dealer/seed")
        seed = control_hex(seed_msg, "seed", 32, peer=DEALER, op="dealer/seed")
        dp_seed = (control_hex(seed_msg, "dp_seed", 32, peer=DEALER, op="dealer/seed")
                   if scenario.privacy is not None else None)
        channel = TLSChannel(me, len(names), links, timeout)
        ctx = PartyContext(
            me,
            len(names),
            channel,
            Preprocessing.for_party(len(names), me, seed,
                                    LinkCorrections(dealer, me, announce=True)),
            pair_prgs=pair_prgs(me, pair_seeds),
            policy=policy,
            names=tuple(names),
            comparison=comparison,
        )
        start = time.perf_counter()
        started_at = time.time()  # wall clock, compared with the dealer's (offline_seconds)
        cpu_start = time.process_time()
        steps = -(-job.rows // scenario.train.batch_size)  # batches per epoch (public)

        def on_epoch(epoch: int, seconds: float) -> None:
            s = channel.stats
            log.info(
                "epoch %d/%d done in %.3fs (sent %d bytes, %d rounds so far)",
                epoch + 1,
                scenario.train.epochs,
                seconds,
                s.bytes_sent,
                s.rounds,
            )
            if me == 0 and launcher is not None:
                launcher.send_json(
                    "progress",
                    {"epoch": epoch + 1, "seconds": seconds, "steps": steps,
                     "bytes_sent": s.bytes_sent, "rounds": s.rounds},
                )

        def on_loss(epoch: int, share: torch.Tensor) -> None:
            # The epoch's mean loss, opened to the launcher only: every party checks the policy.
            policy.authorize("loss", LAUNCHER, f"epoch{epoch + 1}", share.shape)
            if launcher is not None:
                launcher.send_json("progress/loss", {"epoch": epoch + 1, "share": int(share[0])})

        features = data.features  # a row source: the labels ride along in its chunks
        labels = None
        loss_stats: dict[str, int] = {}
        counters = TrainCounters()
        model, released, statistics, prepared = run_job(
            ctx, scenario, job, features, labels, on_epoch, on_loss, loss_stats,
            dp_seed=dp_seed, counters=counters)
        train_seconds = time.perf_counter() - start
        before = channel.stats.snapshot()
        metrics = run_evaluation(
            ctx, scenario, job, model, prepared,
            None if test is None else test.features, None if test is None else test.labels,
        )
        evaluation = _evaluation_stats(before, channel.stats.snapshot(), start, train_seconds)
        if metrics is not None:
            log.info("joint evaluation on %d test rows: %.2fs, %d rounds, sent %d bytes",
                     job.test_rows, evaluation["seconds"], evaluation["rounds"],
                     evaluation["bytes_sent"])
        cpu_seconds = time.process_time() - cpu_start
        privacy = None
        if scenario.privacy is not None:  # public parameters only (cached from training)
            t = scenario.train
            privacy = report_block(scenario.privacy,
                                   plan(scenario.privacy, job.rows, t.batch_size, t.epochs))
        for wname, w, _ in released:
            policy.authorize("weights", LAUNCHER, wname, w.shape,
                             release=None if privacy is None else "dp")
        if not policy.allows("statistics", LAUNCHER):
            statistics = []  # the shares stay here: only the model leaves
        for sname, w, _ in statistics:
            policy.authorize("statistics", LAUNCHER, sname, w.shape)
        outgoing = [*released, *statistics]
        metric_list = list(metric_names(scenario.model.kind)) if metrics is not None else []
        for mname in metric_list:
            policy.authorize("metrics", LAUNCHER, mname, ())
        if me == 0:
            launcher.send_json("progress", {"epoch": None})
        traffic = channel.stats.snapshot()
        launcher.send_json(
            "result/meta",
            {
                "name": args.name,
                "digest": scenario_digest(scenario),
                "weights": [[nm, list(w.shape)] for nm, w, _ in released],
                "statistics": [[nm, list(w.shape)] for nm, w, _ in statistics],
                "frac_bits": [fb for _, _, fb in outgoing],
                "features": list(data.feature_names),
                "train_seconds": train_seconds,
                "train_started": started_at,
                "training": counters.as_dict(),
                "comparison": ctx.comparison,
                "link_rtt_ms": rtt_ms,
                "cpu_seconds": cpu_seconds,
                "stats": traffic,
                "loss_stats": loss_stats or None,
                "ledger": [r.as_dict() for r in policy.ledger],
                "alignment": alignment,
                "metrics": metric_list,
                "evaluation": evaluation if metrics is not None else None,
                "privacy": privacy,
            },
        )
        launcher.send(KIND_TENSORS, "result/weights", [w for _, w, _ in outgoing])
        if metrics is not None:
            launcher.send(KIND_TENSORS, "result/metrics", [metrics])
        _send_statement(launcher, ident, scenario, names, policy, traffic, loss_stats, started,
                        privacy)
        # Barrier: nobody hangs up while a peer may still be reading.
        channel.all_to_all("barrier", [torch.zeros(1, dtype=torch.int64)])
        dealer.send_json("dealer/done", {"name": args.name})
        log.info(
            "finished: %.2fs training, sent %d bytes in %d rounds",
            train_seconds,
            channel.stats.bytes_sent,
            channel.stats.rounds,
        )
        return 0
    except MPCError as exc:
        log_failure(log, exc)
        raise
    finally:
        for link in links.values():
            link.close()
        for end in (dealer, launcher):
            if end is not None:
                end.close()
        listener.close()


def _evaluation_stats(
    before: dict[str, Any], after: dict[str, Any], start: float, train_seconds: float
) -> dict[str, Any]:
    """Seconds, rounds and bytes sent of the joint evaluation (after training)."""
    return {
        "seconds": time.perf_counter() - start - train_seconds,
        "rounds": int(after["rounds"]) - int(before["rounds"]),
        "bytes_sent": int(after["bytes_sent"]) - int(before["bytes_sent"]),
    }


def _send_statement(
    launcher: Link,
    ident: Identity,
    scenario: Scenario,
    names: list[str],
    policy: RevealPolicy,
    traffic: dict[str, Any],
    loss_stats: dict[str, int],
    started: str,
    privacy: dict[str, Any] | None = None,
) -> None:
    """Sign this party's audit statement with its certificate's key; send it to the launcher."""
    statement = build_statement(
        name=ident.name,
        role="party",
        scenario=scenario.name,
        digest=scenario_digest(scenario),
        parties=names,
        ledger=[r.as_dict() for r in policy.ledger],
        traffic=dict(traffic, loss=loss_stats or None),
        started=started,
        finished=utc_now(),
        dp=privacy,
    )
    launcher.send_json(
        "audit/statement",
        {"document": sign_statement(statement, ident.paths.key),
         "certificate": ident.paths.cert.read_text()},
    )


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return run_process(_run, args, args.name)


if __name__ == "__main__":
    raise SystemExit(main())
