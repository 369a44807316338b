"""Links over real mutual TLS in one process: silence timeouts, heartbeats, chunked frames.

Every pair is a :class:`~mpc.net.listener.Listener` and a :func:`~mpc.net.listener.dial` on
loopback
with certificates from :func:`mpc.net.certs.create_deployment`. Timeouts are a fraction of a
second,
so "slow" here means a few seconds in total with no pause as long as the timeout.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import mpc.net.transport
from mpc.core.errors import PeerError, ProtocolError
from mpc.net.certs import DeploymentPaths, client_context, create_deployment, server_context
from mpc.net.channel import TLSChannel
from mpc.net.link import Link
from mpc.net.listener import Listener, dial
from mpc.net.transport import (
    KIND_JSON,
    KIND_TENSORS,
    check_control,
    control_hex,
    op_tag,
    pack_header,
)

TIMEOUT = 0.5


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("certs")
    create_deployment(d, ["a", "b"])
    return d


def _contexts(certs: Path, name: str) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    p = DeploymentPaths.for_name(certs, name)
    return server_context(p.ca, p.cert, p.key), client_context(p.ca, p.cert, p.key)


@pytest.fixture
def pair(certs: Path) -> Iterator[tuple[Link, Link]]:
    """(a, b): a accepted b's connection; both with TIMEOUT seconds of silence allowed."""
    server, _ = _contexts(certs, "a")
    _, client = _contexts(certs, "b")
    listener = Listener("127.0.0.1", 0, server, TIMEOUT)
    dialed: list[Link] = []
    t = threading.Thread(target=lambda: dialed.append(
        dial("127.0.0.1", listener.port, client, "a", time.monotonic() + 10, TIMEOUT)))
    try:
        t.start()
        a = listener.accept({"b"}, time.monotonic() + 10, "b")
        t.join(10)
    finally:
        listener.close()
    (b,) = dialed
    try:
        yield a, b
    finally:
        a.close()
        b.close()


def _small_buffers(*links: Link) -> None:
    """Kernel buffers of ~64 KiB, so a few MiB cannot hide in them."""
    for link in links:
        link.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 16)
        link.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)


def _trickle(link: Link, kind: int, op: str, payload: list[torch.Tensor], pause: float,
             piece: int = 32 << 10) -> None:
    """Send one message in ``piece``-byte writes with ``pause`` seconds between them."""
    with link.send_lock:
        views = [memoryview(b).cast("B") for b in link.frames(kind, op, payload)]
        flat = [v[i : i + piece] for v in views for i in range(0, len(v), piece)]
        for v in flat:
            link._send_views([v], op)
            time.sleep(pause)


def test_slow_reader_does_not_kill_a_big_send(pair: tuple[Link, Link]) -> None:
    """A 1 MiB send to a peer that reads one TLS record (16 KiB) every 30 ms takes seconds in
    total (old code: one TLS write with one deadline for the whole buffer) but is never silent
    for TIMEOUT."""
    a, b = pair
    _small_buffers(a, b)
    big = torch.arange(1 << 17, dtype=torch.int64)  # 1 MiB
    received: list[torch.Tensor] = []

    def slow_reader() -> None:
        reader = b.sock
        got = bytearray()
        start = 0
        while len(got) < start + 24 + 8 * big.numel():  # raw TLS reads
            try:
                chunk = reader.recv(32 << 10)
            except (ssl.SSLWantReadError, BlockingIOError):
                time.sleep(0.005)
                continue
            got += chunk
            while got[start + 2 : start + 4] == b"\x03\x00":  # a's heartbeats come first
                start += 24
            time.sleep(0.03)
        received.append(torch.frombuffer(got[start + 24 :], dtype=torch.int64))

    t = threading.Thread(target=slow_reader)
    b.keepalive = False
    t.start()
    start = time.monotonic()
    a.send(KIND_TENSORS, "big", [big])
    t.join(30)
    took = time.monotonic() - start
    assert took > 3 * TIMEOUT, f"the test did not throttle: {took:.2f}s"
    assert received and torch.equal(received[0], big)


def test_slow_sender_does_not_kill_a_receive(pair: tuple[Link, Link]) -> None:
    a, b = pair
    big = torch.arange(1 << 16, dtype=torch.int64)  # 512 KiB in 16 pieces, 0.1 s apart
    t = threading.Thread(target=_trickle, args=(b, KIND_TENSORS, "big", [big], 0.1))
    t.start()
    start = time.monotonic()
    (got,) = a.recv_tensors("big", [(1 << 16,)])
    t.join(10)
    assert time.monotonic() - start > 3 * TIMEOUT
    assert torch.equal(got, big)


def test_interleaved_round_with_a_slow_peer(pair: tuple[Link, Link]) -> None:
    """TLSChannel's large-round path restarts its deadline whenever bytes move (old code: one
    deadline for the whole round)."""
    a, b = pair
    chan = TLSChannel(0, 2, {1: a}, TIMEOUT)
    mine = torch.arange(1 << 16, dtype=torch.int64) * 3
    theirs = torch.arange(1 << 16, dtype=torch.int64) * 5
    got_b: list[torch.Tensor] = []

    def peer() -> None:
        _trickle(b, KIND_TENSORS, "round", [theirs], 0.1)
        got_b.extend(b.recv_tensors("round", [tuple(mine.shape)]))

    t = threading.Thread(target=peer)
    t.start()
    start = time.monotonic()
    out = chan.exchange("round", {1: [mine]}, {1: [tuple(theirs.shape)]})
    t.join(10)
    assert time.monotonic() - start > 3 * TIMEOUT
    assert torch.equal(out[1][0], theirs) and torch.equal(got_b[0], mine)


def test_silent_peer_is_detected_within_the_timeout(pair: tuple[Link, Link]) -> None:
    a, b = pair
    b.keepalive = False
    b.closed = True  # b stays connected but says nothing, not even heartbeats
    start = time.monotonic()
    with pytest.raises(PeerError, match="timed out"):
        a.recv_json("never")
    took = time.monotonic() - start
    print(f"silent peer detected after {took:.3f}s (timeout {TIMEOUT}s)")
    assert TIMEOUT <= took < TIMEOUT + 0.5


def test_silent_reader_is_detected_when_sending(pair: tuple[Link, Link]) -> None:
    a, b = pair
    _small_buffers(a, b)
    b.closed = True
    start = time.monotonic()
    with pytest.raises(PeerError, match="timed out"):
        a.send(KIND_TENSORS, "big", [torch.zeros(1 << 20, dtype=torch.int64)])  # 8 MiB
    assert time.monotonic() - start < TIMEOUT + 1.5


def test_heartbeats_keep_an_idle_link_alive(pair: tuple[Link, Link]) -> None:
    """b sends nothing for 3x the timeout but its heartbeats; a's receive survives, and the
    heartbeats do not disturb sequence numbers or tags of the frame that follows."""
    a, b = pair
    timer = threading.Timer(3 * TIMEOUT, b.send_json, args=("late", {"x": 1}))
    start = time.monotonic()  # before the timer starts counting: its wait is >= 3x from here
    timer.start()
    assert a.recv_json("late") == {"x": 1}
    assert time.monotonic() - start >= 3 * TIMEOUT
    b.send(KIND_TENSORS, "next", [torch.ones(3, dtype=torch.int64)])
    assert a.recv_tensors("next", [(3,)])[0].tolist() == [1, 1, 1]
    assert (a.recv_seq, b.send_seq) == (2, 2)


def test_concurrent_senders_never_interleave(pair: tuple[Link, Link]) -> None:
    """Two threads (e.g. the dealer's writer and the main thread) plus heartbeats on one link."""
    a, b = pair
    blob = {"pad": "x" * (300 << 10)}  # > one TLS write

    def sender() -> None:
        for _ in range(20):
            b.send_json("c", blob)

    threads = [threading.Thread(target=sender) for _ in range(2)]
    for t in threads:
        t.start()
    for _ in range(40):
        assert a.recv_json("c") == blob
    for t in threads:
        t.join(10)


@pytest.fixture
def small_frames(monkeypatch: pytest.MonkeyPatch) -> int:
    cap = 64 << 10
    monkeypatch.setattr(mpc.net.transport, "MAX_FRAME_BYTES", cap)
    return cap


def test_tensor_above_the_frame_cap_goes_in_chunks(pair: tuple[Link, Link],
                                                   small_frames: int) -> None:
    """A block of 5.5x the frame cap, as one message of several frames, both paths."""
    a, b = pair
    count = (11 * small_frames // 2) // 8
    x = torch.arange(count, dtype=torch.int64)
    y = torch.arange(7, dtype=torch.int64)
    b.send(KIND_TENSORS, "blk", [x, y])
    got = a.recv_tensors("blk", [(count,), (7,)])
    assert torch.equal(got[0], x) and torch.equal(got[1], y)
    assert b.send_seq == a.recv_seq == 6  # ceil(5.5) frames
    # The interleaved path (messages > 256 KiB), both directions at once.
    big = torch.arange(5 * count, dtype=torch.int64)
    chans = [TLSChannel(0, 2, {1: a}, TIMEOUT), TLSChannel(1, 2, {0: b}, TIMEOUT)]
    out: dict[int, torch.Tensor] = {}

    def run(pid: int) -> None:
        res = chans[pid].exchange("r", {1 - pid: [big + pid]}, {1 - pid: [tuple(big.shape)]})
        out[pid] = res[1 - pid][0]

    t = threading.Thread(target=run, args=(1,))
    t.start()
    run(0)
    t.join(10)
    assert torch.equal(out[0], big + 1) and torch.equal(out[1], big)


def test_wrong_continuation_length_is_a_protocol_error(pair: tuple[Link, Link],
                                                       small_frames: int) -> None:
    a, b = pair
    count = 3 * small_frames // 8
    tag = op_tag("blk", [(count,)])
    frames = [pack_header(KIND_TENSORS, tag, 0, small_frames), bytes(small_frames),
              pack_header(KIND_TENSORS, tag, 1, small_frames - 8), bytes(small_frames - 8)]
    with b.send_lock:
        b._send_views([memoryview(f) for f in frames], "blk")
    with pytest.raises(ProtocolError, match="continuation"):
        a.recv_tensors("blk", [(count,)])


def test_byte_payload_above_the_cap_is_refused_by_the_sender(pair: tuple[Link, Link],
                                                             small_frames: int) -> None:
    _, b = pair
    with pytest.raises(ProtocolError, match="frame cap"):
        b.send(KIND_JSON, "big", b"x" * (small_frames + 1))


@pytest.mark.parametrize(
    ("obj", "message"),
    [([1, 2], "not an object"), ({}, "lacks 'seed'"), ({"seed": 3}, "expected str"),
     ({"seed": "zz"}, "not 32 bytes"), ({"seed": "ab"}, "not 32 bytes")],
)
def test_malformed_control_objects(obj: object, message: str) -> None:
    with pytest.raises(ProtocolError, match=message) as info:
        control_hex(check_control(obj, {}, peer="dealer", op="dealer/seed"), "seed", 32,
                    peer="dealer", op="dealer/seed")
    assert "dealer/seed" in str(info.value) and "dealer" in str(info.value)


def test_bool_is_not_an_int_in_control_objects() -> None:
    with pytest.raises(ProtocolError, match="rows"):
        check_control({"rows": True}, {"rows": int}, peer="p", op="hello/meta")
    assert check_control({"rows": 3}, {"rows": int}, peer="p", op="hello/meta") == {"rows": 3}


_TRAINING = {"steps": 1, "rounds_per_step": 3.0, "bytes_sent_per_step": 1.0,
             "dealer_bytes_per_step": 1.0, "range_check_rounds_per_epoch": 13.0,
             "range_check_bytes_sent_per_epoch": 1.0}
_RUN = {"train_started": 0.0, "training": _TRAINING, "comparison": "fss"}


@pytest.mark.parametrize(
    ("meta", "message"),
    [({"name": "p"}, "lacks 'weights'"),
     ({"name": "p", "weights": [["w", [2, "x"]]], "statistics": [], "frac_bits": [16],
       "features": [], "train_seconds": 1.0, "stats": {}, "ledger": [], **_RUN},
      "malformed weight entry"),
     ({"name": "p", "weights": [["w", [2, 1]]], "statistics": [], "frac_bits": [16, 36],
       "features": [], "train_seconds": 1.0, "stats": {}, "ledger": [], **_RUN},
      "malformed frac_bits"),
     ({"name": "p", "weights": [], "statistics": [], "frac_bits": [], "features": [],
       "train_seconds": 1.0, "stats": {"bytes_sent": 1}, "ledger": [], **_RUN},
      "lacks 'bytes_received'"),
     ({"name": "p", "weights": [], "statistics": [], "frac_bits": [], "features": [],
       "train_seconds": 1.0, "stats": {}, "ledger": [], **_RUN,
       "training": dict(_TRAINING, rounds_per_step="3")},
      "rounds_per_step")],
)
def test_launcher_rejects_a_malformed_result(meta: dict, message: str) -> None:
    from parties.common import check_result_meta

    with pytest.raises(ProtocolError, match=message) as info:
        check_result_meta(meta, "p")
    assert "result/meta" in str(info.value)
