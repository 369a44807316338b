"""The per-process keepalive thread: heartbeats on idle links.

Every :class:`~mpc.net.link.Link` created with ``keepalive=True`` registers here (weakly). One
daemon thread wakes a few times per ``HEARTBEAT_FRACTION * timeout`` of the shortest link
timeout and asks each open link to send a heartbeat frame if it has sent nothing for that long
(``Link.heartbeat_if_idle``, which never waits for a busy link). A peer waiting on us while we
compute locally (data masking, the dealer's generation, a slow epoch) thus sees bytes well
within its silence timeout; a stopped or crashed process sends nothing and is detected.

It does not detect a live process whose main thread is stuck: that one keeps beating (the
launcher's overall ``--timeout`` bounds such a run).
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from typing import Protocol

__all__ = ["HEARTBEAT_FRACTION", "KEEPALIVE", "Keepalive"]

log = logging.getLogger(__name__)
HEARTBEAT_FRACTION = 0.25  # a link idle this fraction of its timeout gets a heartbeat


class _Beating(Protocol):
    peer: str
    timeout: float
    closed: bool

    def heartbeat_if_idle(self, now: float) -> None: ...


class Keepalive:
    """The per-process heartbeat thread (started with the first link it is given)."""

    def __init__(self) -> None:
        self._links: weakref.WeakSet[_Beating] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def add(self, link: _Beating) -> None:
        with self._lock:
            self._links.add(link)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="mpc-keepalive",
                                                daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            with self._lock:
                shortest = min((link.timeout for link in self._links), default=8.0)
            time.sleep(min(max(shortest * HEARTBEAT_FRACTION / 2, 0.02), 1.0))
            with self._lock:
                links = [link for link in self._links if not link.closed]
            now = time.monotonic()
            for link in links:
                try:
                    link.heartbeat_if_idle(now)
                except Exception:  # noqa: BLE001 - the keepalive thread must never die
                    log.debug("heartbeat to %s failed", link.peer, exc_info=True)


KEEPALIVE = Keepalive()
