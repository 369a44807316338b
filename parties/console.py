"""The launcher's console: per-epoch progress for people, and one JSON event per line for scripts.

Modes: ``tty`` (a live rich progress bar: epoch, steps/s, elapsed / ETA, loss when the policy
reveals it, bytes sent so far), ``plain`` (one line per epoch, no carriage returns: CI logs and
pipes), ``json`` (one JSON object per line on stdout: ``{"event": "epoch", ...}``, then
``{"event": "done", ...}``), ``quiet`` (nothing). Only public run metadata is shown: timings,
traffic, and the loss after the policy opened it to the launcher.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any, TextIO

__all__ = ["Console", "choose_mode", "human_bytes"]


def choose_mode(quiet: bool, as_json: bool, stream: TextIO) -> str:
    """``json`` beats ``quiet``; otherwise a live bar only on a terminal."""
    if as_json:
        return "json"
    if quiet:
        return "quiet"
    return "tty" if stream.isatty() else "plain"


def human_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


class Console:
    """Progress output of one launch (see the module docstring for the modes)."""

    def __init__(self, mode: str, epochs: int, stream: TextIO | None = None) -> None:
        if mode not in ("tty", "plain", "json", "quiet"):
            raise ValueError(f"Console: unknown mode {mode!r}")
        self.mode = mode
        self.epochs = epochs
        self.stream = stream if stream is not None else sys.stdout
        self.start = time.monotonic()
        self._progress: Any = None
        self._task: Any = None

    def _bar(self) -> None:
        from rich.console import Console as RichConsole
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._progress = Progress(
            TextColumn("epoch"),
            MofNCompleteColumn(),
            BarColumn(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
            console=RichConsole(file=self.stream),
            transient=False,
        )
        self._progress.start()
        self._task = self._progress.add_task("train", total=self.epochs, info="")

    def begin(self) -> None:
        """Training starts (all processes connected)."""
        self.start = time.monotonic()
        if self.mode == "tty":
            try:
                self._bar()
            except ImportError:  # rich is a core dependency; a broken install still runs
                self.mode = "plain"
        elif self.mode == "json":
            self.event("start", epochs=self.epochs)

    def epoch(self, epoch: int, seconds: float, steps: int | None, bytes_sent: int | None,
              rounds: int | None, loss: float | None) -> None:
        """Epoch ``epoch`` (1-based) is done."""
        elapsed = time.monotonic() - self.start
        eta = elapsed / epoch * (self.epochs - epoch) if epoch else 0.0
        rate = steps / seconds if steps and seconds > 0 else None
        if self.mode == "json":
            self.event("epoch", epoch=epoch, epochs=self.epochs, seconds=round(seconds, 4),
                       steps_per_s=None if rate is None else round(rate, 2),
                       elapsed=round(elapsed, 3), eta=round(eta, 3), loss=loss,
                       bytes_sent=bytes_sent, rounds=rounds)
            return
        parts = []
        if rate is not None:
            parts.append(f"{rate:.1f} steps/s")
        if loss is not None:
            parts.append(f"loss {loss:.4f}")
        if bytes_sent is not None:
            parts.append(f"sent {human_bytes(bytes_sent)}")
        if self.mode == "tty" and self._progress is not None:
            self._progress.update(self._task, completed=epoch, info="  ".join(parts))
        elif self.mode == "plain":
            line = (f"epoch {epoch}/{self.epochs} {seconds:.2f}s  elapsed {elapsed:.1f}s  "
                    f"eta {eta:.1f}s  " + "  ".join(parts))
            print(line.rstrip(), file=self.stream, flush=True)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def event(self, kind: str, **fields: Any) -> None:
        """One JSON line (json mode only)."""
        if self.mode == "json":
            print(json.dumps({"event": kind, **fields}, sort_keys=True), file=self.stream,
                  flush=True)

    def message(self, text: str) -> None:
        """A human line (tty and plain modes only)."""
        if self.mode in ("tty", "plain"):
            self.close()
            print(text, file=self.stream, flush=True)
