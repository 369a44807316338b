"""Pieces shared by the party, dealer and launcher processes: CLI options, logging, TLS
identities, the job description exchanged at start, and the job itself (run identically by the
parties and by the dealer's dry run, so both request preprocessing in the same order).
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mpc.config.privacy import plan
from mpc.config.scenario import ProtocolSpec, Scenario
from mpc.core.errors import ConfigError, MPCError, ProtocolError
from mpc.learn.dataprep import Prepared, Released, prepare_data, release_raw_model
from mpc.learn.dp import DPTraining, row_norm_ratios, row_thresholds, share_thresholds
from mpc.learn.evaluation import evaluate
from mpc.learn.jointstats import F_X
from mpc.learn.loss import epoch_loss_hook
from mpc.learn.masked import CHUNK_WORDS, RowSource, row_source
from mpc.learn.reference import with_intercept
from mpc.learn.training import Layout, Model, TrainCounters, initial_weights, train
from mpc.net.certs import DeploymentPaths, client_context, server_context
from mpc.net.link import Link
from mpc.net.transport import check_control
from mpc.protocols.context import PartyContext
from parties.allocator import tune_allocator
from parties.stream import BATCH_OP, LinkCorrections, LinkSink

__all__ = [
    "Job",
    "Identity",
    "add_common_args",
    "setup_logging",
    "run_process",
    "log_failure",
    "run_job",
    "run_evaluation",
    "LinkCorrections",
    "LinkSink",
    "BATCH_OP",
    "DEALER",
    "LAUNCHER",
    "check_result_meta",
    "agree_comparison",
    "RTT_PINGS",
]

DEALER = "dealer"
LAUNCHER = "launcher"
RTT_PINGS = 5  # ping-pongs behind comparison = "auto" (their median round trip decides)


@dataclass(frozen=True)
class Job(Layout):
    """Public job description agreed at start: the data layout plus which party holds the
    labels (vertical), and the test layout for evaluate.at = "parties" (``test_blocks``: test
    rows per party, or columns per party for vertical; ``test_rows``: 0 when the launcher
    evaluates). Shapes only -- never data."""

    label_party: int | None = None
    test_blocks: tuple[int, ...] = ()
    test_rows: int = 0

    def test_layout(self) -> Layout:
        """The public layout of the parties' joint test set."""
        return Layout(self.partition, self.test_blocks, self.test_rows, self.features,
                      self.outputs, self.one_hot)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Job:
        try:
            return cls(
                str(d["partition"]),
                tuple(int(b) for b in d["blocks"]),
                int(d["rows"]),
                int(d["features"]),
                int(d["outputs"]),
                bool(d["one_hot"]),
                None if d["label_party"] is None else int(d["label_party"]),
                tuple(int(b) for b in d.get("test_blocks", ())),
                int(d.get("test_rows", 0)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ProtocolError(f"malformed job description: {exc}") from None


@dataclass(frozen=True)
class Identity:
    """This process's certificate, key and the deployment CA, as TLS contexts."""

    name: str
    paths: DeploymentPaths

    @classmethod
    def load(cls, certs: Path, name: str) -> Identity:
        return cls(name, DeploymentPaths.for_name(certs, name).require())

    def server(self):  # noqa: ANN201 - ssl.SSLContext
        return server_context(self.paths.ca, self.paths.cert, self.paths.key)

    def client(self):  # noqa: ANN201
        return client_context(self.paths.ca, self.paths.cert, self.paths.key)


def add_common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scenario", required=True, type=Path, help="scenario TOML file")
    parser.add_argument(
        "--certs", required=True, type=Path, help="directory with ca.pem, NAME.pem, NAME.key"
    )
    parser.add_argument("--listen", default=None, help="HOST:PORT to listen on")
    parser.add_argument("--dealer", default=None, help="dealer address HOST:PORT")
    parser.add_argument("--launcher", default=None, help="launcher address HOST:PORT")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a scenario key, e.g. train.epochs=2",
    )
    parser.add_argument("--timeout", type=float, default=None,
                        help="silence timeout of every send and receive (s)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: the ops are small and latency-bound)")


def log_failure(log: logging.Logger, exc: MPCError) -> None:
    """Log a failure while the process's links are still open (so the error line precedes
    the peers' reactions) and mark it, so :func:`run_process` does not log it twice."""
    log.error("%s: %s", type(exc).__name__, exc)
    exc.logged = True  # type: ignore[attr-defined]


def run_process(run: Callable[[argparse.Namespace], int], args: argparse.Namespace,
                name: str) -> int:
    """Run a process body and map errors to exit codes: 2 for configuration errors (raised
    before any traffic), 1 for every other toolkit error; both are logged once.

    Debug switch: ``MPC_PROFILE=DIR`` writes a cProfile of the process to ``DIR/NAME.prof``
    (wall-clock times; ``MPC_PROFILE_CPU=1`` times CPU only, leaving out waits on peers).
    """
    # The protocols allocate many short-lived tensors and few reference cycles: collect
    # generation 0 every 50,000 net allocations instead of 700, and keep the objects alive at
    # start-up (modules, torch) out of every collection.
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)
    tune_allocator()  # freed tensors' memory is reused, not page-faulted in anew (glibc)
    try:
        target = os.environ.get("MPC_PROFILE")
        if not target:
            return run(args)
        import cProfile

        cpu = os.environ.get("MPC_PROFILE_CPU") == "1"
        prof = cProfile.Profile(time.process_time) if cpu else cProfile.Profile()
        try:
            return int(prof.runcall(run, args))
        finally:
            prof.dump_stats(os.path.join(target, f"{name}.prof"))
    except ConfigError as exc:
        setup_logging(name).error("configuration error: %s", exc)
        return 2
    except MPCError as exc:
        if not getattr(exc, "logged", False):
            setup_logging(name).error("%s: %s", type(exc).__name__, exc)
        return 1


def setup_logging(name: str, level: int = logging.INFO) -> logging.Logger:
    """Log lines carry the process name; values and shares are never logged."""
    logging.basicConfig(
        level=level,
        format=f"%(asctime)s {name} %(levelname)s %(message)s",
        stream=sys.stderr,
        force=True,
    )
    return logging.getLogger(f"mpc.{name}")


def check_result_meta(obj: Any, name: str) -> dict[str, Any]:
    """A party's ``result/meta`` as the launcher receives it, checked down to every field the
    report reads (a malformed one is a ProtocolError naming the party, never a KeyError)."""
    op = "result/meta"
    meta = check_control(
        obj,
        {"name": str, "weights": list, "statistics": list, "frac_bits": list,
         "features": list, "train_seconds": (int, float), "stats": dict, "ledger": list,
         "train_started": (int, float), "training": dict, "comparison": str},
        peer=name, op=op,
    )
    check_control(meta["training"], {k: (int, float) for k in (
        "steps", "rounds_per_step", "bytes_sent_per_step", "dealer_bytes_per_step",
        "range_check_rounds_per_epoch", "range_check_bytes_sent_per_epoch")},
        peer=name, op=f"{op} training")
    if meta["name"] != name:
        raise ProtocolError(f"launcher: result from {name} names {meta['name']!r}")
    for entry in [*meta["weights"], *meta["statistics"]]:
        if not (
            isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], str)
            and isinstance(entry[1], list)
            and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in entry[1])
        ):
            raise ProtocolError(f"{op}: malformed weight entry from {name}")
    # fractional bits of every tensor sent (mpc.learn.dataprep: 36 for a raw-scale first layer)
    bits = meta["frac_bits"]
    if len(bits) != len(meta["weights"]) + len(meta["statistics"]) or not all(
            isinstance(b, int) and not isinstance(b, bool) and 0 <= b <= 62 for b in bits):
        raise ProtocolError(f"{op}: malformed frac_bits from {name}")
    check_control(meta["stats"], {"bytes_sent": int, "bytes_received": int, "rounds": int,
                                  "per_op": dict}, peer=name, op=f"{op} stats")
    if "cpu_seconds" in meta:
        check_control(meta, {"cpu_seconds": (int, float)}, peer=name, op=op)
    if meta.get("link_rtt_ms") is not None:
        check_control(meta, {"link_rtt_ms": (int, float)}, peer=name, op=op)
    for record in meta["ledger"]:
        check_control(record, {}, peer=name, op=f"{op} ledger")
    return meta


def job_init(scenario: Scenario, job: Job) -> list[np.ndarray]:
    """Public initial weights, without bias rows (see :func:`with_intercept`)."""
    dims = [job.features, *scenario.model.hidden, job.outputs]
    return initial_weights(
        scenario.seed,
        list(zip(dims[:-1], dims[1:], strict=True)),
        scenario.train.init,
        scenario.train.init_scale,
    )


def run_job(
    ctx: PartyContext,
    scenario: Scenario,
    job: Job,
    features: np.ndarray | RowSource | None,
    labels: np.ndarray | None,
    on_epoch: Callable[[int, float], None] | None = None,
    on_loss: Callable[[int, torch.Tensor], None] | None = None,
    loss_stats: dict[str, int] | None = None,
    dp_seed: bytes | None = None,
    counters: TrainCounters | None = None,
) -> tuple[Model, Released, Released, Prepared]:
    """Prepare the data (mpc.learn.dataprep: joint standardisation, intercept column), train, and
    convert the model to raw scale; the same code runs in every party and in the dealer.
    Returns the trained model (training scale), its released named shared tensors and the
    shared statistics (mean, std per feature; empty without standardisation), each with its
    fractional bits, and the data preparation (its scale standardises test rows for
    :func:`run_evaluation`); nothing is opened here. With ``[privacy]``, training is DP-SGD
    (``mpc.learn.dp``) with batches drawn from ``dp_seed`` (the dealer's, unknown to the launcher).

    When the public scenario allows revealing ``loss`` to the launcher, each epoch ends with
    the secure loss (``mpc.learn.loss``, on the prepared data: standardised units), handed as a
    share
    to ``on_loss(epoch, share)``; its bytes and rounds are added to ``loss_stats``.
    """
    kind, intercept = scenario.model.kind, scenario.model.intercept
    start, rounds, sent = time.perf_counter(), ctx.stats.rounds, ctx.stats.bytes_sent
    prepared: Prepared = prepare_data(
        ctx, job, features, labels, job.label_party, standardize=scenario.data.standardize,
        intercept=intercept, linear=kind == "linear", missing=scenario.data.missing == "mean")
    if not ctx.dry:
        logging.getLogger("mpc.learn.dataprep").info(
            "data preparation (standardize=%s) done in %.3fs: sent %d bytes in %d rounds",
            scenario.data.standardize, time.perf_counter() - start,
            ctx.stats.bytes_sent - sent, ctx.stats.rounds - rounds)
    init = job_init(scenario, job)
    model = Model.from_public(ctx, kind, with_intercept(init) if intercept else init, intercept)
    dp = None
    if scenario.privacy is not None:  # [privacy] keeps data.standardize off: raw (bounded) rows
        # the norms include the intercept's 1 column where this party holds it
        ones = intercept and (job.partition == "horizontal" or ctx.pid == job.label_party)
        dp = dp_training(ctx, scenario, job, features, dp_seed, ones=ones)
    epoch_end = None
    if scenario.reveal.allows("loss", LAUNCHER):
        epoch_end = epoch_loss_hook(ctx, model, prepared.data, scenario.seed, on_loss,
                                    loss_stats)
    t = scenario.train
    train(
        ctx,
        model,
        prepared.data,
        epochs=t.epochs,
        batch_size=t.batch_size,
        learning_rate=t.learning_rate,
        seed=scenario.seed,
        shuffle=t.shuffle,
        on_epoch=on_epoch,
        epoch_end=epoch_end,
        dp=dp,
        counters=counters,
    )
    start, rounds, sent = time.perf_counter(), ctx.stats.rounds, ctx.stats.bytes_sent
    released = release_raw_model(ctx, model.weights, job.features, intercept, prepared)
    if not ctx.dry:
        logging.getLogger("mpc.learn.dataprep").info(
            "model release preparation (raw-scale conversion) done in %.3fs: sent %d bytes in "
            "%d rounds", time.perf_counter() - start, ctx.stats.bytes_sent - sent,
            ctx.stats.rounds - rounds)
    st = prepared.stats
    stats: Released = [] if st is None else [("mean", st.mu, F_X), ("std", st.sigma, F_X)]
    return model, released, stats, prepared


def run_evaluation(
    ctx: PartyContext,
    scenario: Scenario,
    job: Job,
    model: Model,
    prepared: Prepared,
    features: np.ndarray | None,
    labels: np.ndarray | None,
) -> torch.Tensor | None:
    """evaluate.at = "parties": shares of the joint test metrics (``mpc.learn.evaluation``), or
    None
    when the launcher evaluates. Run by every party and by the dealer's dry run (None data)."""
    if scenario.evaluate.at != "parties":
        return None
    return evaluate(ctx, scenario.model.kind, model.weights, job.test_layout(), features,
                    labels, job.label_party, intercept=model.intercept, prepared=prepared)


def dp_training(ctx: PartyContext, scenario: Scenario, job: Job,
                features: np.ndarray | RowSource | None, seed: bytes | None, *,
                ones: bool = False) -> DPTraining:
    """DP-SGD of ``[privacy]``: the accountant's sigma and the shared clipping bounds. The
    owner's per-row bounds come from one pass over its rows (an array, or a row source read
    chunk by chunk: N words held, not the rows); ``ones``: the rows carry the intercept's
    public 1 column."""
    spec = scenario.privacy
    if spec is None or seed is None:
        raise ProtocolError(f"{ctx.name}: DP-SGD needs [privacy] and the batch seed")
    t = scenario.train
    acc = plan(spec, job.rows, t.batch_size, t.epochs)
    mine = None
    ratios = scenario.model.kind in ("softmax", "mlp") or job.partition == "vertical"
    source = None if ctx.dry else row_source(ctx.name, features, None)
    if source is not None:
        bounds = row_norm_ratios if ratios else row_thresholds
        parts = []
        for x, _ in source.chunks(max(1, CHUNK_WORDS // (source.cols + 1))):
            if ones:
                x = np.column_stack([x, np.ones(len(x))])
            parts.append(bounds(ctx.fxp.encode(x, what="features"), spec.clip,
                                ctx.fxp.frac_bits))
        mine = torch.cat(parts) if parts else torch.zeros((0, 1), dtype=torch.int64)
    return DPTraining(acc.noise_multiplier, spec.clip, spec.collusion, t.batch_size, seed,
                      share_thresholds(ctx, job, mine), ratios)


def agree_comparison(me: int, names: list[str], links: dict[int, Link], spec: ProtocolSpec
                     ) -> tuple[str, float | None]:
    """The comparison protocol of this run, the same at every party: (protocol, measured round
    trip in ms or None). Only ``comparison = "auto"`` with 2 parties measures: party 0 times
    ``RTT_PINGS`` ping-pongs over its TLS link to party 1 and takes the median
    (:meth:`ProtocolSpec.comparison_for` decides), then tells party 1 the choice, which party 1
    checks against the scenario; party 0 passes it on to the dealer. The round trip is public
    (no data is involved); every receive here has the link's silence timeout."""
    n = len(names)
    if spec.comparison != "auto" or n != 2:
        return spec.comparison_for(n), None
    link = links[1 - me]
    if me == 0:
        trips = []
        for i in range(RTT_PINGS):
            start = time.perf_counter()
            link.send_json("rtt/ping", {"i": i})
            check_control(link.recv_json("rtt/pong"), {"i": int}, peer=names[1], op="rtt/pong")
            trips.append(time.perf_counter() - start)
        rtt_ms = 1000 * float(np.median(trips))
        choice = spec.comparison_for(n, rtt_ms)
        link.send_json("rtt/choice", {"comparison": choice, "rtt_ms": rtt_ms})
        return choice, rtt_ms
    for _ in range(RTT_PINGS):
        ping = check_control(link.recv_json("rtt/ping"), {"i": int}, peer=names[0],
                             op="rtt/ping")
        link.send_json("rtt/pong", {"i": ping["i"]})
    msg = check_control(link.recv_json("rtt/choice"), {"comparison": str,
                                                       "rtt_ms": (int, float)},
                        peer=names[0], op="rtt/choice")
    if not spec.allows(n, msg["comparison"]):
        raise ProtocolError(f"{names[me]}: {names[0]} chose comparison "
                            f"{msg['comparison']!r}, which the scenario does not allow")
    return msg["comparison"], float(msg["rtt_ms"])
