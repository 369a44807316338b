"""``protocol.comparison = "auto"``: the protocol chosen from the parties' measured round trip
(2 parties: bitwise below ``AUTO_RTT_MS``, fss from there up; bitwise for more parties), agreed
by party 0 and checked by party 1 and the dealer against the scenario."""

from __future__ import annotations

import queue
import threading
import time
from typing import Any

from mpc.config.scenario import AUTO_RTT_MS, ProtocolSpec
from mpc.core.errors import ProtocolError
from parties.common import RTT_PINGS, agree_comparison


def test_choice_rules() -> None:
    auto = ProtocolSpec("auto")
    assert auto.comparison_for(2, 0.05) == "bitwise"
    assert auto.comparison_for(2, AUTO_RTT_MS) == "fss"
    assert auto.comparison_for(2, 20.0) == "fss"
    assert auto.comparison_for(2) == "fss"  # unmeasured: the fewer rounds
    assert auto.comparison_for(3, 0.05) == auto.comparison_for(3, 20.0) == "bitwise"
    assert ProtocolSpec("fss").comparison_for(2, 0.05) == "fss"
    assert ProtocolSpec("bitwise").comparison_for(2, 20.0) == "bitwise"
    assert auto.allows(2, "fss") and auto.allows(2, "bitwise")
    assert auto.allows(3, "bitwise") and not auto.allows(3, "fss")
    assert ProtocolSpec("fss").allows(3, "fss") and not ProtocolSpec("fss").allows(2, "bitwise")
    assert not auto.allows(2, "garbled")


class _Link:
    """One end of an in-memory JSON link; ``delay`` seconds before every send (a slow link)."""

    def __init__(self, out: queue.Queue, inbox: queue.Queue, delay: float = 0.0) -> None:
        self.out, self.inbox, self.delay = out, inbox, delay
        self.sent: list[str] = []

    def send_json(self, op: str, obj: Any) -> int:
        time.sleep(self.delay)
        self.sent.append(op)
        self.out.put((op, obj))
        return 0

    def recv_json(self, op: str) -> Any:
        got, obj = self.inbox.get(timeout=10)
        assert got == op, (got, op)
        return obj


def _agree(spec: ProtocolSpec, delay: float = 0.0, forged: str | None = None
           ) -> tuple[list[Any], list[_Link]]:
    a, b = queue.Queue(), queue.Queue()
    links = [_Link(a, b), _Link(b, a, delay)]
    names = ["p0", "p1"]
    out: list[Any] = [None, None]

    def run(me: int) -> None:
        try:
            out[me] = agree_comparison(me, names, {1 - me: links[me]}, spec)  # type: ignore[dict-item]
        except ProtocolError as exc:
            out[me] = exc

    if forged is not None:  # party 0 replaced by a forged choice after honest pings
        def forge() -> None:
            for i in range(RTT_PINGS):
                links[0].send_json("rtt/ping", {"i": i})
                links[0].recv_json("rtt/pong")
            links[0].send_json("rtt/choice", {"comparison": forged, "rtt_ms": 0.1})
        threads = [threading.Thread(target=forge), threading.Thread(target=run, args=(1,))]
    else:
        threads = [threading.Thread(target=run, args=(me,)) for me in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    return out, links


def test_fast_link_takes_bitwise_slow_link_fss() -> None:
    out, links = _agree(ProtocolSpec("auto"))
    (c0, rtt0), (c1, rtt1) = out
    assert c0 == c1 == "bitwise" and rtt0 == rtt1 < AUTO_RTT_MS
    assert links[0].sent == ["rtt/ping"] * RTT_PINGS + ["rtt/choice"]
    out, _ = _agree(ProtocolSpec("auto"), delay=0.002)  # every pong 2 ms late
    (c0, rtt0), (c1, rtt1) = out
    assert c0 == c1 == "fss" and rtt0 == rtt1 >= 2.0


def test_explicit_protocol_measures_nothing() -> None:
    out, links = _agree(ProtocolSpec("bitwise"))
    assert out == [("bitwise", None), ("bitwise", None)]
    assert links[0].sent == links[1].sent == []


def test_party_one_refuses_a_choice_the_scenario_does_not_allow() -> None:
    out, _ = _agree(ProtocolSpec("auto"), forged="garbled")
    assert isinstance(out[1], ProtocolError) and "does not allow" in str(out[1])
