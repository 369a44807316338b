"""``mpc-dealer``: the preprocessing process. It never receives data or shares of data.

It accepts one TLS connection per party (certificate names from the scenario), gives each party
a fresh AES-CTR seed, learns the public job shape from party 0, and then runs the parties'
program as a dry run (dummy data) to produce the correlated randomness in exactly the order the
parties consume it: corrections stream to party 0 ahead of the online phase, throttled only by
TCP back-pressure. Data masks cost no traffic: each owner expands its block's mask from a seed
derived from its dealer seed, and the dry run regenerates the rows of a batch from the same
seed when a triple needs them (``mpc.learn.masked``); it holds no data-sized tensor (E is
shape-only there), so its memory does not grow with the number of rows.
"""

from __future__ import annotations

import argparse
import time

import torch

from mpc.config.audit import build_statement, sign_statement, utc_now
from mpc.config.privacy import plan, report_block
from mpc.config.scenario import load_scenario, scenario_digest
from mpc.core.errors import MPCError, ProtocolError
from mpc.core.preprocessing import Preprocessing
from mpc.core.prg import fresh_seed
from mpc.net.channel import Link, Listener, dial, parse_address
from mpc.net.transport import check_control
from mpc.protocols.context import DryChannel, PartyContext
from parties.common import (
    DEALER,
    LAUNCHER,
    Identity,
    Job,
    LinkSink,
    add_common_args,
    log_failure,
    run_evaluation,
    run_job,
    run_process,
    setup_logging,
)

__all__ = ["main"]


def _run(args: argparse.Namespace) -> int:
    started = utc_now()
    torch.set_num_threads(max(1, args.threads))
    scenario = load_scenario(args.scenario, args.overrides)
    log = setup_logging(DEALER)
    names = list(scenario.party_names)
    n = len(names)
    timeout = args.timeout or scenario.network.timeout_s
    deadline = time.monotonic() + scenario.network.connect_timeout_s
    ident = Identity.load(args.certs, DEALER)
    host, port = (
        parse_address(args.listen)
        if args.listen
        else (scenario.network.dealer_host, scenario.network.dealer_port or 0)
    )
    listener = Listener(host, port, ident.server(), timeout)
    links: dict[int, Link] = {}
    launcher = None
    sink: LinkSink | None = None
    try:
        launcher_addr = (
            parse_address(args.launcher)
            if args.launcher
            else (scenario.network.launcher_host, scenario.network.launcher_port or 0)
        )
        launcher = dial(*launcher_addr, ident.client(), LAUNCHER, deadline, timeout)
        while len(links) < n:
            waiting = {nm for i, nm in enumerate(names) if i not in links}
            link = listener.accept(waiting, deadline, f"parties {sorted(waiting)}")
            links[names.index(link.peer)] = link
        log.info("all %d parties connected", n)
        listener.close()  # nobody else may connect once every party has
        digest = scenario_digest(scenario)
        job: Job | None = None
        comparison: str | None = None
        seeds = {}
        # DP-SGD's batch seed: from OS entropy, to the parties only (never to the launcher).
        dp_seed = fresh_seed() if scenario.privacy is not None else None
        for pid, link in sorted(links.items()):
            hello = check_control(
                link.recv_json("dealer/hello"), {"digest": str}, peer=names[pid], op="dealer/hello"
            )
            if hello["digest"] != digest:
                raise ProtocolError(f"dealer: {names[pid]} runs a different scenario")
            # the parties' agreed comparison protocol (comparison = "auto": measured by them)
            check_control(hello, {"comparison": str}, peer=names[pid], op="dealer/hello")
            if not scenario.protocol.allows(n, hello["comparison"]) or (
                    comparison is not None and hello["comparison"] != comparison):
                raise ProtocolError(f"dealer/hello from {names[pid]}: comparison "
                                    f"{hello['comparison']!r} disagrees with the scenario or "
                                    "the other parties")
            comparison = hello["comparison"]
            if pid == 0:
                check_control(hello, {"job": dict}, peer=names[pid], op="dealer/hello")
                try:
                    job = Job.from_dict(hello["job"])
                except ProtocolError as exc:
                    raise ProtocolError(f"dealer/hello from {names[pid]}: {exc}") from None
            seeds[pid] = fresh_seed()
            seed_msg = {"seed": seeds[pid].hex()}
            if dp_seed is not None:
                seed_msg["dp_seed"] = dp_seed.hex()
            link.send_json("dealer/seed", seed_msg)
        if job is None or comparison is None:
            raise ProtocolError("dealer: party 0 sent no job description")
        # A writer thread sends while the dry run goes on generating: the dealer finishes its
        # CPU work early instead of being paced by the parties through the TCP buffers.
        sink = LinkSink(links, background=True, await_go=True)
        ctx = PartyContext(
            0,
            n,
            DryChannel(0, n, timeout),
            Preprocessing.for_dealer(n, seeds, sink),
            names=tuple(names),
            dry=True,
            comparison=comparison,
        )
        start = time.perf_counter()
        started_at = time.time()
        cpu_start = time.process_time()
        model, _, _, prepared = run_job(ctx, scenario, job, None, None, dp_seed=dp_seed)
        run_evaluation(ctx, scenario, job, model, prepared, None, None)
        generated = time.perf_counter() - start
        sink.finish()
        cpu_seconds = time.process_time() - cpu_start
        log.info(
            "preprocessing for the whole job generated in %.2fs, sent (%d bytes) after %.2fs",
            generated,
            sink.bytes_sent,
            time.perf_counter() - start,
        )
        # Silence-bounded, not total time: the parties' heartbeats keep these links alive for
        # however long the online phase takes.
        for pid, link in sorted(links.items()):
            check_control(link.recv_json("dealer/done"), {}, peer=names[pid], op="dealer/done")
        launcher.send_json(
            "dealer/stats",
            {"bytes_sent": sink.bytes_sent, "cpu_seconds": cpu_seconds, "digest": digest,
             "generation_started": started_at, "generate_seconds": generated},
        )
        statement = build_statement(
            name=DEALER,
            role="dealer",
            scenario=scenario.name,
            digest=digest,
            parties=names,
            ledger=[],  # the dealer never takes part in a reveal
            traffic={"bytes_sent": sink.bytes_sent},
            started=started,
            finished=utc_now(),
            dp=None if scenario.privacy is None else report_block(
                scenario.privacy, plan(scenario.privacy, job.rows, scenario.train.batch_size,
                                       scenario.train.epochs)),
        )
        launcher.send_json(
            "audit/statement",
            {"document": sign_statement(statement, ident.paths.key),
             "certificate": ident.paths.cert.read_text()},
        )
        log.info("done")
        return 0
    except MPCError as exc:
        log_failure(log, exc)
        raise
    finally:
        if sink is not None:
            sink.abort()
        for link in links.values():
            link.close()
        if launcher is not None:
            launcher.close()
        listener.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mpc-dealer", description=__doc__)
    add_common_args(parser)
    return run_process(_run, parser.parse_args(argv), DEALER)


if __name__ == "__main__":
    raise SystemExit(main())
