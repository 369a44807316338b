"""report.html / training.png (``parties.report``): one self-contained page whose every image is
an embedded data: URI, no script or external reference; rendered by headless Chromium when it
is installed; without matplotlib the run degrades to report.json with one log line."""

from __future__ import annotations

import base64
import builtins
import logging
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from parties.report import write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class _Refs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.refs: list[tuple[str, str, str]] = []  # (tag, attribute, value)
        self.tags: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        for key, value in attrs:
            if key in ("src", "href", "srcset", "data", "poster", "action") and value:
                self.refs.append((tag, key, value))
                if tag == "img" and key == "src":
                    self.images.append(value)


def check_html(path: Path) -> int:
    """Assert the page is self-contained; returns the number of embedded images."""
    text = path.read_text(encoding="utf-8")
    parser = _Refs()
    parser.feed(text)
    assert not parser.tags & {"script", "link", "iframe", "object", "embed"}, parser.tags
    for tag, key, value in parser.refs:
        assert value.startswith("data:"), f"<{tag} {key}> refers to {value[:60]!r}"
    assert parser.images, "no image in the report"
    for src in parser.images:
        assert src.startswith("data:image/png;base64,"), src[:40]
        assert base64.b64decode(src.split(",", 1)[1], validate=True).startswith(PNG_MAGIC)
    assert "url(" not in text and "@import" not in text
    return len(parser.images)


def render_with_chromium(page: Path, tmp: Path) -> None:
    """Render with headless Chromium, network disabled; skipped if Chromium is absent."""
    exe = next((shutil.which(c) for c in ("chromium", "chromium-browser", "google-chrome")
                if shutil.which(c)), None)
    if exe is None:
        pytest.skip("no chromium installed (apt-get install chromium)")
    shot = tmp / "shot.png"
    proc = subprocess.run(
        [exe, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1100,1600",
         "--host-resolver-rules=MAP * ~NOTFOUND", f"--user-data-dir={tmp / 'profile'}",
         f"--screenshot={shot}", page.resolve().as_uri()],
        capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert shot.read_bytes().startswith(PNG_MAGIC) and shot.stat().st_size > 20_000


def synthetic_report(loss: bool) -> dict:
    per_op = {"open": {"bytes_sent": 800, "bytes_received": 800, "messages": 9, "rounds": 9},
              "openbits": {"bytes_sent": 300, "bytes_received": 300, "messages": 4,
                           "rounds": 4}}
    report = {
        "scenario": "demo <&>", "scenario_digest": "00" * 32, "parties": ["a", "b"],
        "model": {"kind": "logistic", "hidden": [], "outputs": 1}, "epochs": 3,
        "train_seconds": 1.5, "epoch_seconds": [0.5, 0.4, 0.45],
        "comparison": "bitwise", "link_rtt_ms": 0.23, "rounds_per_step": 6.0,
        "per_party": [{"name": n, "bytes_sent": 1100, "bytes_received": 1100, "rounds": 13,
                       "per_op": per_op, "loss_computation": None} for n in ("a", "b")],
        "dealer": {"bytes_sent": 9000},
        "reveals": [{"party": n, "what": "weights", "to": "launcher", "name": "w",
                     "shape": [3, 1]} for n in ("a", "b")],
        "metrics": {"accuracy": 0.9}, "reference": {"accuracy": 0.91},
        "expect": {"metric": "accuracy", "value": 0.9, "tolerance": 0.02, "got": 0.9,
                   "ok": True},
    }
    if loss:
        report["loss"] = [0.6, 0.5, 0.45]
        report["reference_loss"] = [0.6, 0.5, 0.45]
    return report


@pytest.mark.parametrize("loss", [True, False], ids=["loss", "no-loss"])
def test_report_is_self_contained(tmp_path: Path, loss: bool) -> None:
    written = write_report(tmp_path, synthetic_report(loss))
    assert written == [tmp_path / "report.html", tmp_path / "training.png"]
    assert (tmp_path / "training.png").read_bytes().startswith(PNG_MAGIC)
    assert check_html(tmp_path / "report.html") == 1
    text = (tmp_path / "report.html").read_text()
    assert "demo &lt;&amp;&gt;" in text  # names are escaped
    assert ("0.45000" in text) == loss
    assert "Reveal ledger" in text and "OUT OF TOLERANCE" not in text
    assert "bitwise (auto: link round trip 0.230 ms" in text  # the protocol and why


def test_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    write_report(tmp_path, synthetic_report(True))
    render_with_chromium(tmp_path / "report.html", tmp_path)


def test_without_matplotlib_only_report_json(tmp_path: Path, monkeypatch, caplog) -> None:
    real_import = builtins.__import__

    def no_matplotlib(name: str, *args, **kwargs):  # noqa: ANN202
        if name.startswith("matplotlib"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    with caplog.at_level(logging.INFO, logger="parties.report"):
        assert write_report(tmp_path, synthetic_report(True)) == []
    assert not list(tmp_path.iterdir())
    lines = [r for r in caplog.records if r.name == "parties.report"]
    assert len(lines) == 1 and "matplotlib is not installed" in lines[0].getMessage()
