"""The launcher's console (``parties.console``): plain lines without carriage returns off a
terminal, one JSON object per line with --json, nothing with --quiet, a rich bar on a TTY."""

from __future__ import annotations

import io
import json
import re

from parties.console import Console, choose_mode, human_bytes


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def _feed(console: Console) -> None:
    console.begin()
    console.epoch(1, 0.5, 10, 123_456, 40, 0.69)
    console.epoch(2, 0.25, 10, 246_912, 80, None)
    console.close()
    console.message("done")
    console.event("done", out="x")


def test_mode_choice() -> None:
    assert choose_mode(False, False, io.StringIO()) == "plain"
    assert choose_mode(False, False, _Tty()) == "tty"
    assert choose_mode(True, False, _Tty()) == "quiet"
    assert choose_mode(True, True, io.StringIO()) == "json"


def test_plain_is_one_line_per_epoch() -> None:
    out = io.StringIO()
    _feed(Console("plain", 2, out))
    text = out.getvalue()
    assert "\r" not in text and "\x1b" not in text
    lines = text.splitlines()
    assert lines[0].startswith("epoch 1/2 0.50s") and "20.0 steps/s" in lines[0]
    assert "loss 0.6900" in lines[0] and "sent 123.5 kB" in lines[0]
    assert lines[1].startswith("epoch 2/2") and "loss" not in lines[1]
    assert lines[2:] == ["done"]


def test_json_events() -> None:
    out = io.StringIO()
    _feed(Console("json", 2, out))
    events = [json.loads(ln) for ln in out.getvalue().splitlines()]
    assert [e["event"] for e in events] == ["start", "epoch", "epoch", "done"]
    assert events[1]["loss"] == 0.69 and events[2]["loss"] is None
    assert events[1]["steps_per_s"] == 20.0 and events[2]["bytes_sent"] == 246_912


def test_quiet_prints_nothing() -> None:
    out = io.StringIO()
    _feed(Console("quiet", 2, out))
    assert out.getvalue() == ""


def test_tty_uses_a_progress_bar() -> None:
    out = _Tty()
    _feed(Console("tty", 2, out))
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.getvalue())  # rich's ANSI codes
    assert "epoch 2/2" in text and "40.0 steps/s" in text and text.rstrip().endswith("done")


def test_human_bytes() -> None:
    assert [human_bytes(x) for x in (12, 1234, 5_600_000, 7.2e9)] == [
        "12 B", "1.2 kB", "5.6 MB", "7.2 GB"]
