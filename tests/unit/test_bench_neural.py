"""The neural / WAN benchmarks' own logic: report parsing, the CrypTen WAN estimate, the call
counter, the generated scenarios, and the plaintext twin against mpc.learn.reference.

No CrypTen, no network namespaces, no training runs through processes: seconds.
"""

from __future__ import annotations

import numpy as np
import pytest

from bench.crypten.comm_counter import CallCounter, per_step, wan_estimate_ms
from bench.neural_bench import (
    median_runs,
    ours_figures,
    render_text,
    scenario_text,
    write_party_data,
)
from bench.neural_data import MODELS, digits, init_weights, train_plain
from mpc.config.datasets import load_party_data
from mpc.config.scenario import load_scenario
from mpc.learn.reference import train_reference


def _report(**top: object) -> dict:
    party = {
        "bytes_sent": 10_000, "rounds": 130, "cpu_seconds": 2.0,
        "per_op": {"mask": {"bytes_sent": 4_000, "rounds": 1},
                   "rangecheck": {"bytes_sent": 64, "rounds": 2},
                   "open": {"bytes_sent": 5_000, "rounds": 100},
                   "openbits": {"bytes_sent": 936, "rounds": 27}},
    }
    report = {"epochs": 2, "train_seconds": 3.0, "per_party": [party, dict(party, rounds=131)],
              "dealer": {"bytes_sent": 20_000, "cpu_seconds": 1.0},
              "metrics": {"accuracy": 0.9}, "reference": {"accuracy": 0.91},
              "max_abs_weight_diff": 1e-3}
    report.update(top)
    return report


def test_ours_figures_fallback_excludes_setup_ops():
    fig = ours_figures(_report(), [1.4, 1.2], steps_per_epoch=8)
    assert fig["rounds_source"] == "per_op"
    # most of any party (131 - 1 mask - 2 rangecheck) over 16 steps
    assert fig["rounds_per_step"] == pytest.approx(128 / 16)
    assert fig["bytes_per_party_per_step"] == pytest.approx((10_000 - 4_064) / 16)
    assert fig["dealer_bytes_per_step"] == pytest.approx(20_000 / 16)
    assert fig["s_per_epoch"] == pytest.approx(1.5)  # no offline_seconds: train only
    assert fig["ms_per_step"] == pytest.approx(1500 / 8)
    assert fig["epoch_log_s_mean"] == pytest.approx(1.3)
    assert fig["reference_accuracy"] == 0.91


def test_ours_figures_uses_report_rounds_and_offline_time():
    fig = ours_figures(_report(rounds_per_step=3, offline_seconds=1.0), [], steps_per_epoch=8)
    assert fig["rounds_source"] == "report" and fig["rounds_per_step"] == 3
    assert fig["s_per_epoch"] == pytest.approx((3.0 + 1.0) / 2)  # time counted whole
    nested = _report(dealer={"bytes_sent": 8, "offline_seconds": 0.5})
    nested["per_party"] = [dict(p, rounds_per_step=4.0) for p in nested["per_party"]]
    fig = ours_figures(nested, [], steps_per_epoch=8)
    assert fig["offline_seconds"] == 0.5 and fig["rounds_per_step"] == 4.0
    with pytest.raises(ValueError, match="no training steps"):
        ours_figures(_report(epochs=0), [], steps_per_epoch=8)


def test_ours_figures_prefers_the_training_block():
    """report.json's own per-step counters (range checks apart) win over the per_op fallback."""
    report = _report(rounds_per_step=3.0, comparison="fss", training={
        "steps": 16, "rounds_per_step": 3.0, "dealer_bytes_per_step": 777.0,
        "bytes_sent_per_step": {"a": 100.0, "b": 120.0}, "range_check_rounds_per_epoch": 2.0})
    fig = ours_figures(report, [], steps_per_epoch=8)
    assert fig["bytes_per_party_per_step"] == 120.0
    assert fig["dealer_bytes_per_step"] == 777.0 and fig["dealer_bytes_total"] == 20_000
    assert fig["range_check_rounds_per_epoch"] == 2.0 and fig["comparison"] == "fss"


def test_median_runs_pick_each_columns_median_and_keep_every_pair():
    ours = [{"s_per_epoch": s, "tag": i} for i, s in enumerate([0.8, 0.6, 0.7])]
    peer = [{"s_per_epoch": s} for s in (40.0, 30.0, 36.0)]
    got = median_runs(ours, peer)
    assert got["ours"]["tag"] == 2 and got["crypten"]["s_per_epoch"] == 36.0
    assert got["ratio_crypten_over_ours"] == pytest.approx(36.0 / 0.7)
    assert got["ratio_runs"] == pytest.approx([50.0, 50.0, 36.0 / 0.7])
    assert got["repeats"] == 3 and got["ours_s_per_epoch_runs"] == [0.8, 0.6, 0.7]
    # an even count errs low: ours' slower middle run, CrypTen's faster one
    even = median_runs(ours[:2], peer[:2])
    assert even["ours"]["s_per_epoch"] == 0.8 and even["crypten"]["s_per_epoch"] == 30.0
    # CrypTen failed or left out: ours alone, no ratio
    alone = median_runs(ours, [None, None, None])
    assert alone["crypten"] is None and alone["ratio_crypten_over_ours"] is None
    assert alone["ratio_runs"] == []
    with pytest.raises(ValueError, match="no runs"):
        median_runs([], [])


def test_render_text_shows_runs_and_the_ratio_range():
    figures = ours_figures(_report(), [1.0], 10)
    plain = {"s_per_epoch": 0.01, "accuracy": 0.9}
    peer = {"s_per_epoch": 60.0, "ms_per_step": 6000.0, "os_bytes_per_party_per_step": 1e5,
            "party_calls_per_step": 100, "dealer_round_trips_per_step": 100,
            "accuracy": 0.2, "plaintext_accuracy_same_steps": 0.2}
    row = {"model": "digits-mlp", "parties": 2, "plaintext": plain,
           **median_runs([figures, figures], [peer, dict(peer, s_per_epoch=45.0)])}
    text = render_text({"command": "c", "code": "x", "runtime_seconds": 1.0,
                        "method": "m", "rows": [row]})
    line = text.splitlines()[4]
    assert line.split()[-2:] == ["2", "30.0-40.0"]  # ours 1.5 s/epoch, CrypTen 60 and 45
    assert "30.0" in line.split()[-3]  # the row: CrypTen's faster middle run
    old = {k: v for k, v in row.items() if k not in ("repeats", "ratio_runs")}
    assert render_text({"command": "c", "code": "x", "runtime_seconds": 1.0, "method": "m",
                        "rows": [old]}).splitlines()[4].split()[-2:] == ["1", "-"]


def test_wan_estimate_formula():
    # 100 ms of loopback work + (25 party calls + 25 TTP round trips) x 20 ms RTT
    assert wan_estimate_ms(100.0, 25, 25, 10.0) == pytest.approx(100.0 + 50 * 20.0)
    assert wan_estimate_ms(100.0, 25, 25, 0.0) == pytest.approx(100.0)
    with pytest.raises(ValueError, match="delay"):
        wan_estimate_ms(1.0, 1, 1, -1.0)


def test_call_counter_books_ttp_calls_apart():
    counter = CallCounter()
    all_reduce = counter._comm("all_reduce", lambda x: x)
    send_obj = counter._comm("send_obj", lambda x: x)
    barrier = counter._comm("barrier", lambda: None)
    request = counter._ttp(lambda: (send_obj(1), send_obj(2)))
    for _ in range(3):
        all_reduce(1)
        request()
    barrier()
    snap = counter.snapshot()
    assert snap == {"party_calls": 3, "dealer_round_trips": 3, "by_kind": {"all_reduce": 3}}
    assert counter.barriers == 1
    assert per_step(snap, 3)["party_calls_per_step"] == 1.0
    counter.reset()
    assert counter.snapshot()["party_calls"] == 0


@pytest.mark.parametrize("name", sorted(MODELS))
def test_plaintext_twin_is_the_reference_training(name):
    """The schedule/gradients CrypTen mirrors are those of mpc.learn.reference."""
    model = MODELS[name]
    Xtr, ytr, _, _ = digits()
    ours, _ = train_plain(model, Xtr, ytr, epochs=1)
    ref = train_reference(model.kind, Xtr, ytr, init_weights(model, Xtr.shape[1]), epochs=1,
                          batch_size=model.batch, learning_rate=model.lr, seed=0, outputs=10)
    for a, b in zip(ours, ref, strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)


def test_generated_scenario_loads(tmp_path):
    Xtr, ytr, Xte, yte = digits()
    names = write_party_data(tmp_path, Xtr, ytr, Xte, yte, 3)
    model = MODELS["digits-mlp"]
    path = tmp_path / "scenario.toml"
    path.write_text(scenario_text("t", model, names, epochs=2))
    sc = load_scenario(path)
    assert sc.model.kind == "mlp" and list(sc.model.hidden) == [32]
    assert not sc.model.intercept and not sc.data.standardize
    assert (sc.train.batch_size, sc.train.learning_rate, sc.train.epochs) == (32, 0.1, 2)
    rows = [load_party_data(sc, p.name) for p in sc.parties]
    np.testing.assert_array_equal(np.vstack([r.features for r in rows]), Xtr)
    np.testing.assert_array_equal(np.concatenate([r.labels for r in rows]), ytr)


def test_train_bench_row_shows_the_median_runs_and_the_ratio_range() -> None:
    """bench/train_bench.py --repeats: the logistic table's row is built from the same
    median_runs; the line shows the median runs' ratio, the repeat count and the pair range."""
    from bench.train_bench import row_text

    def ours(s: float) -> dict:
        return {"s_per_epoch": s, "ms_per_step": 1000 * s / 79, "comparison": "bitwise",
                "bytes_per_party_per_step": 5200.0, "rounds_per_step": 6.0,
                "party_cpu_ms_per_step": 2.5, "dealer_cpu_ms_per_step": 1.4,
                "accuracy": 0.967, "reference_accuracy": 0.967}

    runs = [ours(0.30), ours(0.20), ours(0.25)]
    peers = [{"s_per_epoch": 15.0}, {"s_per_epoch": 12.0}, {"s_per_epoch": 18.0}]
    row = {"workload": "synthetic10k", "parties": 2, "epochs": 3,
           "plaintext": {"s_per_epoch": 0.03}, **median_runs(runs, peers)}
    assert row["ours"]["s_per_epoch"] == 0.25 and row["crypten"]["s_per_epoch"] == 15.0
    cells = row_text(row).split()
    assert cells[:3] == ["synthetic10k", "2", "bitwise"]
    assert cells[3] == "0.250" and cells[-4:] == ["15.00", "60.0", "3", "50.0-72.0"]
