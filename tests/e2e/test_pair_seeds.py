"""Issue 13.5: the parties' pairwise PRGs must agree (P_i's generator towards j is P_j's
towards i), so a zero-sharing drawn from them sums to zero. Before the fix every party derived
all its pair generators from the concatenation of *its own* pair seeds, so over real TLS the
shares never summed to zero; the simulation derived them consistently and could not see it.

Three parties run the real connection set-up and hello of ``parties.party`` over mutual TLS
(threads in this process, loopback sockets), then draw a zero-sharing."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import torch

from mpc.config.scenario import load_scenario
from mpc.config.streaming import PartyStream
from mpc.core.sharing import pair_prgs, reconstruct, zero_share
from mpc.net.certs import create_deployment
from mpc.net.channel import Link, Listener
from parties import party
from parties.common import Identity

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.e2e
@pytest.mark.timeout(120)
def test_zero_share_over_real_tls_links(tmp_path: Path) -> None:
    scenario = load_scenario(ROOT / "scenarios" / "three-hospitals.toml")
    names = list(scenario.party_names)
    n = len(names)
    create_deployment(tmp_path, names)
    idents = [Identity.load(tmp_path, nm) for nm in names]
    listeners = [Listener("127.0.0.1", 0, ident.server(), 20.0) for ident in idents]
    addrs = {nm: ("127.0.0.1", lst.port) for nm, lst in zip(names, listeners, strict=True)}
    shares: dict[int, torch.Tensor] = {}
    errors: list[BaseException] = []
    all_links: list[Link] = []

    def run(me: int) -> None:
        try:
            deadline = time.monotonic() + 30
            links = party._connect_mesh(me, names, idents[me], listeners[me], addrs, deadline,
                                        20.0)
            all_links.extend(links.values())
            data = PartyStream(scenario, names[me])  # as the party process reads it
            _, seeds = party._hello(me, names, links, scenario, data)
            shares[me] = zero_share(me, n, pair_prgs(me, seeds), (1000,))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for link in all_links:
        link.close()
    for lst in listeners:
        lst.close()
    assert not errors, errors
    assert sorted(shares) == list(range(n))
    assert torch.equal(reconstruct([shares[i] for i in range(n)]),
                       torch.zeros(1000, dtype=torch.int64))
    for i in range(n):  # each share on its own is not zero (uniformly random)
        assert int((shares[i] == 0).sum()) < 5
