"""Protocol mismatch: processes that disagree on the job fail fast and clearly, never train.

End to end (processes started by hand, as in test_intruders.py: launcher in ``--coordinator``
mode, dealer, clinic_a and clinic_b on explicit loopback ports): one party runs

(a) another ``--set seed=1``,
(b) another ``--set train.epochs``,
(c) a copy of the scenario file with another learning rate.

Every process, the launcher included, must exit non-zero within ~20 s, the parties must log
"different scenario (digest mismatch)", and no weights or report may be written.

Unit level (simulation: :func:`mpc.protocols.simulate.simulate`,
:func:`mpc.net.transport.local_channels`;
and two real TLS links in this process): parties that call different operations, or the same
operation on different shapes, in the same round -- or a party whose program diverges from the
dealer's -- raise ProtocolError / PreprocessingExhausted at once instead of computing garbage
(timeouts are short, and the error must come well before them).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from mpc.core.errors import MPCError, PeerError, PreprocessingExhausted, ProtocolError
from mpc.net.certs import DeploymentPaths, client_context, create_deployment, server_context
from mpc.net.channel import Link, Listener, TLSChannel, dial
from mpc.net.transport import local_channels
from mpc.protocols import arith as protocols
from mpc.protocols.simulate import simulate
from parties.common import LinkCorrections, LinkSink

PARTIES = ("clinic_a", "clinic_b")
EXIT_WITHIN_S = 30.0  # from the start of the processes; each imports torch (~3 s on 2 cores)
DIGEST_MESSAGE = "different scenario (digest mismatch)"


# --------------------------------------------------------------------------- end to end


def _scenario_copy(e2e, tmp_path: Path, learning_rate: str) -> Path:
    """two-clinics with absolute data paths and another learning rate."""
    text = e2e.scenario_path("two-clinics").read_text()
    text = text.replace('data = "data/', f'data = "{e2e.ROOT}/scenarios/data/')
    assert "learning_rate = 0.5\n" in text
    text = text.replace("learning_rate = 0.5\n", f"learning_rate = {learning_rate}\n")
    path = tmp_path / "two-clinics-copy.toml"
    path.write_text(text)
    return path


# name -> (deviating party, extra arguments for it); a scenario copy is made for "file".
MISMATCHES = {
    "seed": ("clinic_a", ["--set", "seed=1"]),
    "epochs": ("clinic_b", ["--set", "train.epochs=3"]),
    "file": ("clinic_b", []),
}


@pytest.mark.e2e
@pytest.mark.timeout(90)
@pytest.mark.parametrize("mismatch", list(MISMATCHES))
def test_mismatched_party_fails_every_process(mismatch: str, tmp_path: Path, procs,
                                              e2e) -> None:
    certs, out, logs = tmp_path / "certs", tmp_path / "out", tmp_path / "logs"
    create_deployment(certs, [*PARTIES, "dealer", "launcher"])
    scenario = str(e2e.scenario_path("two-clinics"))
    deviant, extra = MISMATCHES[mismatch]
    own_scenario = {p: scenario for p in PARTIES}
    if mismatch == "file":
        own_scenario[deviant] = str(_scenario_copy(e2e, tmp_path, "0.25"))

    p_launcher, p_dealer, p_a, p_b = e2e.free_ports(4)
    sets = ["--set", "train.epochs=2"]
    addrs = ["--certs", str(certs), "--launcher", f"127.0.0.1:{p_launcher}",
             "--dealer", f"127.0.0.1:{p_dealer}"]
    peers = ["--peer", f"clinic_a=127.0.0.1:{p_a}", "--peer", f"clinic_b=127.0.0.1:{p_b}"]
    started = [
        procs.start("launcher", ["-m", "parties.launch", scenario, "--coordinator", "--listen",
                                 f"127.0.0.1:{p_launcher}", "--certs", str(certs), "--out",
                                 str(out), "--quiet", *sets], out_dir=logs),
        procs.start("dealer", ["-m", "parties.dealer", "--scenario", scenario, *addrs, *sets,
                               "--listen", f"127.0.0.1:{p_dealer}"], out_dir=logs),
    ]
    for name, port in zip(PARTIES, (p_a, p_b), strict=True):
        args = ["-m", "parties.party", "--scenario", own_scenario[name], *addrs, *peers, *sets,
                "--name", name, "--listen", f"127.0.0.1:{port}"]
        started.append(procs.start(name, args + (extra if name == deviant else []),
                                   out_dir=logs))
    t0 = min(p.started for p in started)

    def all_logs() -> str:
        return e2e.collect_logs(logs, out)

    codes = {}
    for p in started:
        codes[p.name] = p.wait(max(0.1, EXIT_WITHIN_S - (time.monotonic() - t0)))
    took = time.monotonic() - t0
    running = [n for n, c in codes.items() if c is None]
    assert not running, f"{running} still running {EXIT_WITHIN_S}s after the start\n{all_logs()}"
    assert all(c != 0 for c in codes.values()), f"exit codes {codes}\n{all_logs()}"
    for p in started:
        if p.name in PARTIES:
            text = p.stderr.read_text(errors="replace")
            assert DIGEST_MESSAGE in text, f"{p.name}: no {DIGEST_MESSAGE!r}\n{all_logs()}"
    assert "run failed" in started[0].stderr.read_text(errors="replace"), all_logs()
    assert not (out / "weights.npz").exists(), all_logs()
    assert not (out / "report.json").exists(), all_logs()
    assert not e2e.wait_no_pids(tmp_path, 5), all_logs()
    print(f"{mismatch}: all processes exited {codes} within {took:.1f}s of the start")


@pytest.mark.e2e
@pytest.mark.timeout(90)
def test_launcher_with_another_scenario_writes_no_report(tmp_path: Path, procs, e2e) -> None:
    """Issue 13.6: parties and dealer agree with each other, but the coordinator runs another
    seed: it must refuse their results (digest mismatch) instead of writing a report that
    describes a run which did not happen."""
    certs, out, logs = tmp_path / "certs", tmp_path / "out", tmp_path / "logs"
    create_deployment(certs, [*PARTIES, "dealer", "launcher"])
    scenario = str(e2e.scenario_path("two-clinics"))
    p_launcher, p_dealer, p_a, p_b = e2e.free_ports(4)
    sets = ["--set", "train.epochs=1"]
    addrs = ["--certs", str(certs), "--launcher", f"127.0.0.1:{p_launcher}",
             "--dealer", f"127.0.0.1:{p_dealer}"]
    peers = ["--peer", f"clinic_a=127.0.0.1:{p_a}", "--peer", f"clinic_b=127.0.0.1:{p_b}"]
    launcher = procs.start("launcher", [
        "-m", "parties.launch", scenario, "--coordinator", "--listen", f"127.0.0.1:{p_launcher}",
        "--certs", str(certs), "--out", str(out), "--quiet", *sets, "--set", "seed=1"],
        out_dir=logs)
    procs.start("dealer", ["-m", "parties.dealer", "--scenario", scenario, *addrs, *sets,
                           "--listen", f"127.0.0.1:{p_dealer}"], out_dir=logs)
    for name, port in zip(PARTIES, (p_a, p_b), strict=True):
        procs.start(name, ["-m", "parties.party", "--scenario", scenario, *addrs, *peers, *sets,
                           "--name", name, "--listen", f"127.0.0.1:{port}"], out_dir=logs)
    rc = launcher.wait(60)
    text = e2e.collect_logs(logs, out)
    assert rc is not None and rc != 0, f"launcher exit {rc}\n{text}"
    assert DIGEST_MESSAGE in launcher.stderr.read_text(errors="replace"), text
    assert not (out / "weights.npz").exists(), text
    assert not (out / "report.json").exists(), text


# --------------------------------------------------------------------------- simulation

SIM_TIMEOUT = 10.0  # receive timeout of the simulated channels and test links
PROMPT_S = 5.0  # the error must come well before a receive would time out


def _run_diverging(n: int, fn: Callable[..., Any], *args: Any) -> dict[str, BaseException]:
    """simulate() ``fn``; expect a ProtocolError/PreprocessingExhausted well before timeouts.
    Returns the exception each party (and the dealer's dry run) raised."""
    errors: dict[str, BaseException] = {}

    def recorded(ctx, *a: Any) -> Any:
        try:
            return fn(ctx, *a)
        except BaseException as exc:
            errors["dealer" if ctx.dry else f"P{ctx.pid}"] = exc
            raise

    start = time.monotonic()
    with pytest.raises((ProtocolError, PreprocessingExhausted)) as info:
        simulate(n, recorded, *args, timeout=SIM_TIMEOUT)
    took = time.monotonic() - start
    assert took < PROMPT_S, f"mismatch detected only after {took:.2f}s: {info.value!r}"
    assert not any(isinstance(e, PeerError) and "timed out" in str(e) for e in errors.values()), (
        errors)
    return errors


def _zeros(*shape: int) -> torch.Tensor:
    return torch.zeros(shape, dtype=torch.int64)


@pytest.mark.e2e
@pytest.mark.timeout(30)
@pytest.mark.parametrize("n", [2, 3])
def test_different_ops_in_the_same_round(n: int) -> None:
    """P0 multiplies elementwise, the others multiply matrices."""

    def fn(ctx, x, y):
        if ctx.pid == 0:
            return protocols.mul(ctx, x, y)
        return protocols.matmul(ctx, x, y)

    errors = _run_diverging(n, fn, _zeros(3, 3), _zeros(3, 3))
    for pid in range(n):
        assert isinstance(errors.get(f"P{pid}"), ProtocolError), errors
        assert "open/m" in str(errors[f"P{pid}"]), errors


@pytest.mark.e2e
@pytest.mark.timeout(30)
@pytest.mark.parametrize("shapes", [((2, 3), (3, 3)), ((2, 3), (3, 2))],
                         ids=["different-size", "transposed"])
def test_same_op_on_different_shapes(shapes) -> None:
    """Both parties call mul in the same round, on tensors of different shapes."""
    xs = [_zeros(*shapes[0]), _zeros(*shapes[1])]
    errors = _run_diverging(2, lambda ctx, x: protocols.mul(ctx, x, x), xs)
    assert isinstance(errors.get("P0"), ProtocolError), errors
    assert isinstance(errors.get("P1"), ProtocolError), errors


@pytest.mark.e2e
@pytest.mark.timeout(30)
def test_extra_round_is_a_sequence_or_tag_mismatch() -> None:
    """n = 3: P2 skips a multiplication that P0 and P1 perform."""

    def fn(ctx, x):
        if ctx.pid != 2:
            x = protocols.mul(ctx, x, x)
        return protocols.matmul(ctx, x, x)

    errors = _run_diverging(3, fn, _zeros(2, 2))
    assert any(isinstance(e, ProtocolError) for e in errors.values()), errors


@pytest.mark.e2e
@pytest.mark.timeout(30)
@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.parametrize("divergence", ["op", "shape"])
def test_party_program_diverges_from_the_dealer(n: int, divergence: str) -> None:
    """The dealer's dry run multiplies elementwise; the parties do something else."""

    def fn(ctx, x):
        if ctx.dry:
            return protocols.mul(ctx, x, x)
        if divergence == "op":
            return protocols.matmul(ctx, x, x)
        return protocols.mul(ctx, x[:1], x[:1])

    errors = _run_diverging(n, fn, _zeros(2, 2))
    # Party 0 receives the dealer's corrections, so it is the one that must notice.
    assert isinstance(errors.get("P0"), PreprocessingExhausted), errors
    assert "dealer" not in errors, errors


@pytest.mark.e2e
@pytest.mark.timeout(30)
def test_local_channels_reject_kind_tag_and_shape_mismatches() -> None:
    def both(fa: Callable[[Any], Any], fb: Callable[[Any], Any]) -> list[BaseException | None]:
        chans = local_channels(2, timeout=SIM_TIMEOUT)
        errs: list[BaseException | None] = [None, None]

        def go(i: int, f: Callable[[Any], Any]) -> None:
            try:
                f(chans[i])
            except MPCError as exc:
                errs[i] = exc

        threads = [threading.Thread(target=go, args=(i, f), daemon=True)
                   for i, f in enumerate((fa, fb))]
        start = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join(SIM_TIMEOUT + 5)
        assert time.monotonic() - start < PROMPT_S, errs
        return errs

    t = [_zeros(2, 2)]
    # Control object against tensors.
    errs = both(lambda c: c.all_to_all("open/mul", t), lambda c: (c.send_json(0, "open/mul", {}),
                                                                   c.all_to_all("open/mul", t)))
    assert isinstance(errs[0], ProtocolError) and "kind" in str(errs[0]), errs
    # Same round, different op names.
    errs = both(lambda c: c.all_to_all("open/mul", t), lambda c: c.all_to_all("open/trunc", t))
    assert all(isinstance(e, ProtocolError) for e in errs), errs
    # Same op, transposed shapes with the same number of elements.
    errs = both(lambda c: c.all_to_all("open/mul", [_zeros(2, 3)]),
                lambda c: c.all_to_all("open/mul", [_zeros(3, 2)]))
    assert all(isinstance(e, ProtocolError) for e in errs), errs


# --------------------------------------------------------------------------- real TLS links


def _tls_pair(certs: Path, a: str, b: str, timeout: float) -> tuple[Link, Link]:
    """Two ends of one mutual-TLS link: (a's end, b's end)."""
    create_deployment(certs, [a, b])
    pa = DeploymentPaths.for_name(certs, a).require()
    pb = DeploymentPaths.for_name(certs, b).require()
    listener = Listener("127.0.0.1", 0, server_context(pa.ca, pa.cert, pa.key), timeout)
    deadline = time.monotonic() + 10
    dialed: dict[str, Any] = {}

    def dial_b() -> None:
        try:
            dialed["link"] = dial("127.0.0.1", listener.port,
                                  client_context(pb.ca, pb.cert, pb.key), a, deadline, timeout)
        except MPCError as exc:
            dialed["error"] = exc

    thread = threading.Thread(target=dial_b, daemon=True)
    thread.start()
    try:
        end_a = listener.accept({b}, deadline, b)
    finally:
        thread.join(10)
        listener.close()
    assert "link" in dialed, dialed
    return end_a, dialed["link"]


def _tls_round(tmp_path: Path, op_b: str, shape_a: tuple[int, ...],
               shape_b: tuple[int, ...]) -> list[BaseException | None]:
    """One all_to_all round over TLS: P0 sends open/mul of ``shape_a``, P1 ``op_b``/``shape_b``."""
    end0, end1 = _tls_pair(tmp_path / "certs", "p0", "p1", SIM_TIMEOUT)
    chans = [TLSChannel(0, 2, {1: end0}, SIM_TIMEOUT), TLSChannel(1, 2, {0: end1}, SIM_TIMEOUT)]
    jobs = [("open/mul", shape_a), (op_b, shape_b)]
    errs: list[BaseException | None] = [None, None]

    def go(i: int) -> None:
        op, shape = jobs[i]
        try:
            chans[i].all_to_all(op, [torch.arange(6, dtype=torch.int64).reshape(shape)])
        except MPCError as exc:
            errs[i] = exc

    threads = [threading.Thread(target=go, args=(i,), daemon=True) for i in range(2)]
    start = time.monotonic()
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(SIM_TIMEOUT + 5)
    finally:
        for c in chans:
            c.close()
    assert time.monotonic() - start < PROMPT_S + 2, errs
    return errs


@pytest.mark.e2e
@pytest.mark.timeout(30)
def test_tls_channel_rejects_a_different_op(tmp_path: Path) -> None:
    errs = _tls_round(tmp_path, "open/matmul", (2, 3), (2, 3))
    assert all(isinstance(e, ProtocolError) for e in errs), errs


@pytest.mark.e2e
@pytest.mark.timeout(30)
def test_tls_channel_rejects_transposed_shapes(tmp_path: Path) -> None:
    errs = _tls_round(tmp_path, "open/mul", (2, 3), (3, 2))
    assert all(isinstance(e, ProtocolError) for e in errs), errs


def _stream_mismatch(
    tmp_path: Path, sent: tuple[str, tuple[int, ...]], wanted: tuple[str, tuple[int, ...]]
) -> float:
    """Send one correction over a real TLS dealer stream and request another: the read must
    raise PreprocessingExhausted; returns how long that took."""
    dealer_end, party_end = _tls_pair(tmp_path / "certs", "dealer", "p0", SIM_TIMEOUT)
    try:
        sink = LinkSink({0: dealer_end})
        sink.write(0, sent[0], _zeros(*sent[1]))
        sink.flush()
        start = time.monotonic()
        with pytest.raises(PreprocessingExhausted):
            LinkCorrections(party_end, 0).read(*wanted)
        return time.monotonic() - start
    finally:
        dealer_end.close()
        party_end.close()


@pytest.mark.e2e
@pytest.mark.timeout(30)
def test_tls_dealer_stream_rejects_transposed_request(tmp_path: Path) -> None:
    _stream_mismatch(tmp_path, ("triple/matmul", (2, 3)), ("triple/matmul", (3, 2)))


@pytest.mark.e2e
@pytest.mark.timeout(30)
def test_tls_dealer_stream_rejects_another_op(tmp_path: Path) -> None:
    took = _stream_mismatch(tmp_path, ("triple/mul", (2, 2)), ("triple/matmul", (2, 2)))
    assert took < PROMPT_S
