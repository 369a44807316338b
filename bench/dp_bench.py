"""Accuracy vs epsilon of DP-SGD inside MPC (``mpc.learn.dp``) against plaintext float64 DP-SGD
(``mpc.learn.dpreference``) with the same settings: the breast-cancer data of
``scenarios/three-hospitals-dp.toml`` (3 parties, logistic, B = 64, 10 epochs, lr = 0.5,
C = 1, delta = 1e-4) or, with ``--scenario digits-softmax``, the digits (softmax, 10 classes,
delta = 1e-5). The secure side runs in the in-process simulation (``mpc.protocols.simulate``: the
same
protocol code as the party processes, noise from OS entropy); mean +- std over ``--seeds``
runs each. Writes bench/results/dp_accuracy[-SCENARIO].png and .json.

    python bench/dp_bench.py --seeds 5
    python bench/dp_bench.py --scenario digits-softmax --seeds 5 --epsilons 1 8 inf
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mpc.config.datasets import apply_bounds, load_table  # noqa: E402
from mpc.config.privacy import PrivacySpec, plan  # noqa: E402
from mpc.config.scenario import load_party_data, load_scenario  # noqa: E402
from mpc.core import fixedpoint  # noqa: E402
from mpc.core.prg import fresh_seed  # noqa: E402
from mpc.core.sharing import reconstruct  # noqa: E402
from mpc.learn.dp import (  # noqa: E402
    DPTraining,
    row_norm_ratios,
    row_thresholds,
    share_thresholds,
)
from mpc.learn.dpreference import dp_sgd_reference  # noqa: E402
from mpc.learn.reference import train_reference  # noqa: E402
from mpc.learn.training import Layout, Model, mask_inputs, train  # noqa: E402
from mpc.protocols.simulate import simulate  # noqa: E402

EPSILONS = (0.5, 1.0, 2.0, 4.0, 8.0, math.inf)


def load(name: str = "three-hospitals-dp"):  # noqa: ANN201
    sc = load_scenario(ROOT / "scenarios" / f"{name}.toml")
    parts = [load_party_data(sc, n) for n in sc.party_names]
    t = load_table(sc.evaluate.data)
    cols = list(t.columns)
    order = [cols.index(c) for c in parts[0].feature_names]
    names = parts[0].feature_names  # training columns are scaled by data.bounds at load
    return (sc, parts, apply_bounds(sc, names, t.values[:, order]),
            t.values[:, cols.index(sc.data.label)])


def secure_weights(sc, parts, epsilon: float) -> np.ndarray:  # noqa: ANN001
    """One secure run (simulation) at ``epsilon`` (inf: the non-DP secure SGD, shuffled epochs)."""
    tr, kind, k = sc.train, sc.model.kind, sc.model.outputs
    blocks = tuple(len(p.features) for p in parts)
    rows, d = sum(blocks), parts[0].features.shape[1]
    layout = Layout("horizontal", blocks, rows, d, k, kind == "softmax")
    bounds = row_norm_ratios if kind == "softmax" else row_thresholds
    clip = 1.0
    sigma = 0.0
    if math.isfinite(epsilon):
        sigma = plan(PrivacySpec(epsilon, None, clip, None, 1), rows, tr.batch_size,
                     tr.epochs).noise_multiplier
    seed = fresh_seed()

    def party(ctx, features, labels):  # noqa: ANN001, ANN202
        data = mask_inputs(ctx, layout, features, labels, None)
        model = Model.from_public(ctx, kind, [np.zeros((d, k))])
        dp = None
        if sigma > 0:
            mine = None if ctx.dry else bounds(fixedpoint.encode(features), clip, 16)
            dp = DPTraining(sigma, clip, 1, tr.batch_size, seed,
                            share_thresholds(ctx, layout, mine), kind == "softmax")
        train(ctx, model, data, epochs=tr.epochs, batch_size=tr.batch_size,
              learning_rate=tr.learning_rate, seed=int.from_bytes(seed[:8], "little"), dp=dp)
        return model.weights[0]

    res = simulate(3, party, [p.features for p in parts], [p.labels for p in parts],
                   timeout=900)
    return fixedpoint.decode(reconstruct(list(res))).numpy()


def accuracy(w: np.ndarray, X: np.ndarray, y: np.ndarray) -> float:
    z = X @ w
    return float(np.mean((z[:, 0] > 0 if z.shape[1] == 1 else np.argmax(z, 1)) == y))


def plain_weights(sc, parts, epsilon: float, seed: int) -> np.ndarray:  # noqa: ANN001
    tr, kind, k = sc.train, sc.model.kind, sc.model.outputs
    X = np.concatenate([p.features for p in parts])
    y = np.concatenate([p.labels for p in parts])
    if not math.isfinite(epsilon):
        return train_reference(kind, X, y, [np.zeros((X.shape[1], k))], epochs=tr.epochs,
                               batch_size=tr.batch_size, learning_rate=tr.learning_rate,
                               seed=seed, shuffle=True, outputs=k)[0]
    sigma = plan(PrivacySpec(epsilon, None, 1.0, None, 1), len(X), tr.batch_size,
                 tr.epochs).noise_multiplier
    return dp_sgd_reference(kind, X, y, epochs=tr.epochs, batch_size=tr.batch_size,
                            learning_rate=tr.learning_rate, noise_multiplier=sigma, clip=1.0,
                            seed=seed, classes=k)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=5, help="secure runs per epsilon")
    ap.add_argument("--plain-seeds", type=int, default=20)
    ap.add_argument("--scenario", default="three-hospitals-dp")
    ap.add_argument("--epsilons", type=float, nargs="+", default=list(EPSILONS))
    args = ap.parse_args()
    sc, parts, Xt, yt = load(args.scenario)
    epsilons = tuple(args.epsilons)
    out: dict[str, dict[str, list[float]]] = {}
    for eps in epsilons:
        start = time.perf_counter()
        sec = [accuracy(secure_weights(sc, parts, eps), Xt, yt) for _ in range(args.seeds)]
        pla = [accuracy(plain_weights(sc, parts, eps, s), Xt, yt)
               for s in range(args.plain_seeds)]
        out[str(eps)] = {"secure": sec, "plaintext": pla}
        print(f"epsilon {eps}: secure {np.mean(sec):.4f} +- {np.std(sec):.4f} ({len(sec)} runs), "
              f"plaintext {np.mean(pla):.4f} +- {np.std(pla):.4f} ({len(pla)} seeds) "
              f"[{time.perf_counter() - start:.0f}s]", flush=True)
    res = ROOT / "bench" / "results"
    res.mkdir(parents=True, exist_ok=True)
    stem = "dp_accuracy" + ("" if args.scenario == "three-hospitals-dp" else f"-{args.scenario}")
    (res / f"{stem}.json").write_text(json.dumps(out, indent=1) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = np.arange(len(epsilons))
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for key, shift, label in (("secure", -0.06, "DP-SGD inside MPC (3 parties)"),
                              ("plaintext", 0.06, "plaintext float64 DP-SGD")):
        m = [np.mean(out[str(e)][key]) for e in epsilons]
        s = [np.std(out[str(e)][key]) for e in epsilons]
        ax.errorbar(xs + shift, m, yerr=s, marker="o", capsize=3, label=label)
    ax.set_xticks(xs, [("∞" if not math.isfinite(e) else f"{e:g}") for e in epsilons])
    rows = sum(len(p.features) for p in parts)
    ax.set_xlabel(f"ε (δ = {10.0 ** math.floor(math.log10(1 / (10 * rows))):.0e})")
    ax.set_ylabel("test accuracy")
    ax.set_title(f"{args.scenario}, {sc.model.kind}, C = 1 (secure {args.seeds} runs, "
                 f"plaintext {args.plain_seeds} seeds)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(res / f"{stem}.png", dpi=120)
    print(f"wrote {res / f'{stem}.png'}")


if __name__ == "__main__":
    main()
