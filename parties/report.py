"""Run report for people: ``report.html`` (one self-contained file) and ``training.png``.

Built from report.json alone (public run metadata: timings, traffic, the reveal ledger, metrics,
and the loss only when the policy opened it), so it can be regenerated from a run directory:
``python -m parties.report RUN_DIR``. The figure shows the loss per epoch (when revealed), the
time per epoch, and bytes and rounds per party per operation kind; the page adds metrics against
the scenario's ``[expect]``, the reveal ledger as a table and the per-party traffic. Images are
embedded as ``data:`` URIs and there is no script or external reference: the page opens offline.

matplotlib is a dependency of ``.[dev]`` and of the plain install; without it the run keeps
report.json only and logs one line.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import sys
from pathlib import Path
from typing import Any

__all__ = ["render_figure", "render_html", "write_report", "main"]

log = logging.getLogger(__name__)

_CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:0.5em 0 1.5em}th,td{border:1px solid #ccc;
padding:3px 8px;text-align:right}th{background:#f0f0f0}td.l,th.l{text-align:left}
.ok{color:#070}.bad{color:#b00}img{max-width:100%}h1{font-size:1.5em}h2{font-size:1.2em}"""


def render_figure(report: dict[str, Any]) -> bytes:
    """training.png: loss per epoch, time per epoch, bytes and rounds per party and op kind."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(11, 7.5), dpi=90, layout="constrained")
    axes = fig.subplots(2, 2)
    ax = axes[0][0]
    loss = report.get("loss")
    if loss:
        epochs = list(range(1, len(loss) + 1))
        ax.plot(epochs, loss, "o-", label="secure (revealed)")
        if report.get("reference_loss"):
            ax.plot(epochs, report["reference_loss"], "x--", label="plaintext reference")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("mean training loss (sample)")
        ax.legend()
    else:
        ax.text(0.5, 0.5, "loss not revealed\n(reveal policy)", ha="center", va="center")
        ax.set_axis_off()
    ax.set_title("loss per epoch")
    ax = axes[0][1]
    seconds = report.get("epoch_seconds") or []
    ax.bar(range(1, len(seconds) + 1), seconds, color="#4a7")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("seconds")
    ax.set_title("time per epoch")
    parties = report.get("per_party", [])
    ops = sorted({op for p in parties for op in p.get("per_op", {})})
    for ax, key, title in ((axes[1][0], "bytes_sent", "bytes sent"),
                           (axes[1][1], "rounds", "rounds")):
        bottom = [0.0] * len(parties)
        names = [p["name"] for p in parties]
        for op in ops:
            vals = [float(p.get("per_op", {}).get(op, {}).get(key, 0)) for p in parties]
            ax.bar(names, vals, bottom=bottom, label=op)
            bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
        ax.set_title(f"{title} per party, by operation kind")
        if ops:
            ax.legend(fontsize="small")
    fig.suptitle(f"{report.get('scenario')}: {report.get('model', {}).get('kind')}, "
                 f"{len(parties)} parties, {report.get('epochs')} epochs")
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _table(head: list[str] | None, rows: list[list[Any]], left: int = 1) -> str:
    def cell(tag: str, i: int, v: Any) -> str:
        cls = ' class="l"' if i < left else ""
        return f"<{tag}{cls}>{html.escape(str(v))}</{tag}>"

    out = ["<table>"]
    if head:
        out.append("<tr>" + "".join(cell("th", i, h) for i, h in enumerate(head)) + "</tr>")
    for r in rows:
        out.append("<tr>" + "".join(cell("td", i, v) for i, v in enumerate(r)) + "</tr>")
    return "".join(out) + "</table>"


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _comparison(report: dict[str, Any]) -> str:
    """The comparison protocol that ran, and the measured round trip behind an automatic
    choice (``comparison = "auto"``, 2 parties)."""
    name = str(report.get("comparison", "-"))
    rtt = report.get("link_rtt_ms")
    if rtt is None:
        return name
    return f"{name} (auto: link round trip {float(rtt):.3f} ms; bitwise below 1 ms)"


def render_html(report: dict[str, Any], png: bytes) -> str:
    """The self-contained page (the figure as a data: URI)."""
    e = html.escape
    model = report.get("model", {})
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>"
             f"{e(str(report.get('scenario')))} run report</title><style>{_CSS}</style></head>"
             f"<body><h1>Run report: {e(str(report.get('scenario')))}</h1>"]
    parts.append(_table(None, [
        ["model", f"{model.get('kind')} hidden={model.get('hidden')} "
                  f"outputs={model.get('outputs')}"],
        ["parties", ", ".join(report.get("parties", []))],
        ["epochs", report.get("epochs")],
        ["comparison protocol", _comparison(report)],
        ["rounds per training step", _fmt(report.get("rounds_per_step", "-"))],
        ["training time", f"{report.get('train_seconds', 0):.2f} s"],
        ["scenario digest", report.get("scenario_digest", "")],
    ], left=2))
    parts.append("<h2>Metrics</h2>")
    exp = report.get("expect")
    if exp:
        ok = bool(exp.get("ok"))
        parts.append(_table(["metric", "got", "expected", "tolerance", "result"], [[
            exp.get("metric"), _fmt(exp.get("got")), _fmt(exp.get("value")),
            _fmt(exp.get("tolerance")), "ok" if ok else "OUT OF TOLERANCE"]]))
    metrics = report.get("metrics") or {}
    ref = report.get("reference") or {}
    if metrics:
        parts.append(_table(["metric", "secure", "plaintext reference"],
                            [[k, _fmt(v), _fmt(ref.get(k, "-"))] for k, v in metrics.items()]))
    elif not exp:
        parts.append("<p>No evaluation data in the scenario.</p>")
    b64 = base64.b64encode(png).decode("ascii")
    parts.append(f"<h2>Training</h2><img alt='training figure' src='data:image/png;base64,{b64}'>")
    loss = report.get("loss")
    if loss:
        reference = report.get("reference_loss") or [None] * len(loss)
        parts.append(_table(["epoch", "loss (revealed)", "plaintext reference", "seconds"], [
            [i + 1, f"{v:.5f}", "-" if r is None else f"{r:.5f}",
             f"{s:.3f}"] for i, (v, r, s) in enumerate(
                zip(loss, reference, report.get("epoch_seconds") or [0.0] * len(loss),
                    strict=False))]))
    else:
        parts.append("<p>The per-epoch loss was not revealed (not allowed by the scenario's "
                     "reveal policy).</p>")
    parts.append("<h2>Reveal ledger</h2>")
    parts.append(_table(["party", "what", "to", "name", "shape"], [
        [r.get("party"), r.get("what"), r.get("to"), r.get("name"), r.get("shape")]
        for r in report.get("reveals", [])], left=4))
    parts.append("<h2>Traffic</h2>")
    rows = []
    for p in report.get("per_party", []):
        for op, st in sorted(p.get("per_op", {}).items()):
            rows.append([p["name"], op, f"{st.get('bytes_sent', 0):,}",
                         f"{st.get('rounds', 0):,}"])
        rows.append([p["name"], "total", f"{p.get('bytes_sent', 0):,}",
                     f"{p.get('rounds', 0):,}"])
        extra = p.get("loss_computation")
        if extra:
            rows.append([p["name"], "of which: loss evaluation",
                         f"{extra.get('bytes_sent', 0):,}", f"{extra.get('rounds', 0):,}"])
    dealer = report.get("dealer") or {}
    rows.append(["dealer", "preprocessing", f"{dealer.get('bytes_sent', 0):,}", "-"])
    parts.append(_table(["party", "operation", "bytes sent", "rounds"], rows, left=2))
    parts.append("</body></html>\n")
    return "".join(parts)


def write_report(out: Path, report: dict[str, Any]) -> list[Path]:
    """Write training.png and report.html next to report.json; returns the files written.

    Without matplotlib, writes nothing and logs one line (report.json stays the record).
    """
    try:
        png = render_figure(report)
    except ImportError:
        log.warning("matplotlib is not installed: wrote report.json only (no report.html, "
                    "training.png); pip install -e '.[dev]'")
        return []
    (out / "training.png").write_bytes(png)
    (out / "report.html").write_text(render_html(report, png), encoding="utf-8")
    return [out / "report.html", out / "training.png"]


def main(argv: list[str] | None = None) -> int:
    """``python -m parties.report RUN_DIR``: (re)build the HTML report from report.json."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m parties.report RUN_DIR", file=sys.stderr)
        return 2
    run = Path(args[0])
    try:
        report = json.loads((run / "report.json").read_text())
    except (OSError, ValueError) as exc:
        print(f"cannot read {run / 'report.json'}: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    for path in write_report(run, report):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
