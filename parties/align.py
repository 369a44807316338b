"""Row alignment of a vertical partition at a party: private set intersection of the ids, and
the party's rows in the intersection's order, streamed.

:func:`align_rows` runs :func:`mpc.protocols.psi.private_intersection` over the party links
(``data.align = "psi"``) and returns an :class:`AlignedStream`: the party's file, checked and
read in chunks as before (:class:`mpc.config.streaming.PartyStream`), written once to an
unlinked temporary file (float64 rows, the label last) and gathered back in ascending id order
chunk by chunk, so the alignment holds the ids (8 bytes a row) and the PSI's group elements,
not the rows. ``"ordered"`` rows were checked by the mesh hello and pass through unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from mpc.config.policy import RevealPolicy
from mpc.config.scenario import Scenario
from mpc.config.streaming import STREAM_ROWS, PartyStream
from mpc.core.errors import ConfigError
from mpc.learn.rowstores import FileRows
from mpc.net.channel import Link, TLSChannel
from mpc.protocols.psi import private_intersection

__all__ = ["AlignedStream", "align_rows"]


class AlignedStream:
    """The rows ``order`` (indices in file order) of a checked party stream, in that order: a
    row source (:meth:`chunks`) with the stream's ``feature_names``, ``has_labels`` and the
    aligned ``ids``. Built by one pass over the stream into an unlinked temporary file; each
    chunk is gathered from it (one ``pread`` per row above 64 MiB: bounded memory)."""

    labels = None  # labels come with the features' chunks

    def __init__(self, stream: PartyStream, order: np.ndarray) -> None:
        if stream.ids is None:
            raise ValueError(f"{stream.name}: aligning rows needs the id column")
        self.name = stream.name
        self.order = np.asarray(order, dtype=np.int64)
        self.rows, self.cols = len(self.order), stream.cols
        self.feature_names = stream.feature_names
        self.has_labels = stream.has_labels
        self.ids = stream.ids[self.order]
        self._store = FileRows((stream.rows, self.cols + int(self.has_labels)))
        at = 0
        for x, y in stream.chunks(STREAM_ROWS):
            block = np.asarray(x, dtype=np.float64)
            if self.has_labels:
                if y is None:
                    raise ValueError(f"{self.name}: a chunk of rows {at}.. has no labels")
                block = np.column_stack([block, np.asarray(y, dtype=np.float64)])
            self._store.write(at, torch.from_numpy(np.ascontiguousarray(block).view(np.int64)))
            at += len(block)
        if at != stream.rows:
            raise ValueError(f"{self.name}: the data file yielded {at} rows, {stream.rows} "
                             "were checked")

    def __len__(self) -> int:
        return self.rows

    @property
    def features(self) -> AlignedStream:
        """The features as a row source (labels ride along in :meth:`chunks`)."""
        return self

    def chunks(self, n: int) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        """(features, labels or None) of ``n`` aligned rows each (the last may be shorter)."""
        for lo in range(0, self.rows, max(1, n)):
            block = self._store.take(self.order[lo : lo + max(1, n)]).numpy().view(np.float64)
            yield (block[:, : self.cols],
                   block[:, self.cols] if self.has_labels else None)

    def close(self) -> None:
        self._store.close()


def align_rows(
    me: int,
    names: list[str],
    links: dict[int, Link],
    scenario: Scenario,
    data: PartyStream,
    policy: RevealPolicy,
    metas: dict[int, Any],
    timeout: float,
) -> tuple[PartyStream | AlignedStream, dict[str, Any]]:
    """Align a vertical partition's rows; returns this party's aligned data and its alignment
    record for report.json (counts, time, traffic -- never ids).

    ``"psi"``: private set intersection over the party links (its own channel, so its traffic
    is counted apart from training), rows reordered to ascending id. The receive timeouts stay
    those of silence: a peer busy with its share of the curve arithmetic sends heartbeats
    (:mod:`mpc.net.keepalive`). ``"ordered"``: already checked by the mesh hello.
    """
    rows = len(data)
    if data.ids is None or scenario.data.align != "psi":
        return data, {"method": "ordered", "intersection": rows, "rows": rows, "seconds": 0.0,
                      "rounds": 0, "bytes_sent": 0}
    log = logging.getLogger(f"mpc.{names[me]}")
    policy.require("intersection", "all", "ids")  # before any PSI message (checked again there)
    total = sum(int(m["rows"]) for m in metas.values())
    log.info("PSI over %d parties: %d rows here, %d in all", len(names), rows, total)
    channel = TLSChannel(me, len(names), links, timeout)
    res = private_intersection(channel, data.ids, names=names, policy=policy)
    log.info("PSI done in %.2fs: %d common ids of %d rows (sent %d bytes in %d rounds)",
             res.seconds, res.size, rows, res.bytes_sent, res.rounds)
    batch = scenario.train.batch_size
    if res.size == 0:
        raise ConfigError(f"{names[me]}: the private set intersection is empty: no id is held "
                          f"by every party ({rows} rows here); nothing to train on")
    if res.size < batch:
        raise ConfigError(f"{names[me]}: the private set intersection has {res.size} ids, "
                          f"fewer than one batch (train.batch_size = {batch})")
    aligned = AlignedStream(data, res.rows)
    return aligned, {"method": "psi", "intersection": res.size, "rows": rows,
                     "seconds": res.seconds, "rounds": res.rounds, "bytes_sent": res.bytes_sent}
