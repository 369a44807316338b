"""Cross-check against CrypTen 0.4.1: sigmoid, matmul and one logistic SGD step agree.

For the same inputs, our 2-party simulation (``mpc.protocols.simulate``) and CrypTen (single
process,
world size 1, its default trusted-first-party provider and 16 fractional bits) must agree within
the tolerances below, and each must stay within its own error bound of float64 torch/numpy.
Skipped, with the reason, only if CrypTen 0.4.1 cannot be imported (``bench/crypten/install.sh``
installs it; torch 2.13 needs the ``torch.onnx._internal.registration`` shim used by
``bench/crypten/run_crypten.py``).
"""

from __future__ import annotations

import importlib
import sys
import types
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pytest
import torch

from bench.data import breast_cancer
from mpc.core import fixedpoint
from mpc.core.sharing import reconstruct
from mpc.learn.training import Layout, Model, mask_inputs, train
from mpc.protocols import arith as protocols
from mpc.protocols import functions
from mpc.protocols.simulate import simulate
from tests.conftest import share_reals

SKIP_REASON = "CrypTen 0.4.1 is not installed (bench/crypten/install.sh)"
PARTIES = 2

OURS_SIGMOID_BOUND = 3.5e-3  # mpc/protocols/functions.py: 17-piece linear, max abs error 3.4e-3
# CrypTen 0.4.1's default sigmoid (1 / (1 + exp(-|x|)), exp by 9 squarings, 3 Newton steps)
# states no bound; it measures 2.3e-3 on [-10, 10] here. 1.2e-2 leaves room without letting a
# different method (e.g. a 3-piece linear sigmoid, error ~ 0.1) pass.
CRYPTEN_SIGMOID_BOUND = 1.2e-2
SIGMOID_AGREE = 1.5e-2
MATMUL_AGREE = 1e-3
STEP_AGREE = 5e-3
STEP_VS_FLOAT64 = 5e-3


def _import_crypten() -> types.ModuleType | None:
    """``import crypten`` on torch 2.13 (shim as in bench/crypten/run_crypten.py), or None."""
    name = "torch.onnx._internal.registration"
    if name not in sys.modules:
        try:
            importlib.import_module(name)
        except ImportError:  # gone in torch 2.13; crypten imports ``registry`` from it
            shim = types.ModuleType(name)
            shim.registry = None  # type: ignore[attr-defined]
            sys.modules[name] = shim
    try:
        import crypten
    except ImportError:  # not installed, or installed without its dependencies
        return None
    return crypten if getattr(crypten, "__version__", None) == "0.4.1" else None


@pytest.fixture(scope="module")
def crypten(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """CrypTen initialised in single-process mode (rank 0 of 1) for this module only."""
    module = _import_crypten()
    if module is None:
        pytest.skip(SKIP_REASON)
    rendezvous = tmp_path_factory.mktemp("crypten") / "rendezvous"
    with pytest.MonkeyPatch.context() as mp:  # crypten.init reads (and would set) these
        mp.setenv("RANK", "0")
        mp.setenv("WORLD_SIZE", "1")
        mp.setenv("DISTRIBUTED_BACKEND", "gloo")
        mp.setenv("RENDEZVOUS", rendezvous.as_uri())
        module.init()
        try:
            assert module.comm.get().get_world_size() == 1
            yield module
        finally:
            module.uninit()


def _plain(t: Any) -> torch.Tensor:
    """CrypTen's result in the clear, as float64."""
    return t.get_plain_text().to(torch.float64)


def _ours(shares: Sequence[torch.Tensor]) -> torch.Tensor:
    """Our result in the clear: the parties' shares summed and decoded."""
    return fixedpoint.decode(reconstruct(shares))


def test_sigmoid_agrees(crypten, prg):
    x = torch.linspace(-10, 10, 2001, dtype=torch.float64)
    exact = torch.sigmoid(x)
    ours = _ours(simulate(PARTIES, functions.sigmoid, share_reals(x, PARTIES, prg)))
    theirs = _plain(crypten.cryptensor(x).sigmoid())
    assert float((ours - exact).abs().max()) <= OURS_SIGMOID_BOUND
    assert float((theirs - exact).abs().max()) <= CRYPTEN_SIGMOID_BOUND
    assert float((ours - theirs).abs().max()) <= SIGMOID_AGREE


def test_matmul_agrees(crypten, prg):
    gen = torch.Generator().manual_seed(17)
    a = torch.randn(17, 33, generator=gen, dtype=torch.float64)
    b = torch.randn(33, 5, generator=gen, dtype=torch.float64)
    shares = share_reals(a, PARTIES, prg), share_reals(b, PARTIES, prg)
    ours = _ours(simulate(PARTIES, protocols.matmul, *shares))
    theirs = _plain(crypten.cryptensor(a).matmul(crypten.cryptensor(b)))
    assert float((ours - theirs).abs().max()) <= MATMUL_AGREE
    assert float((ours - a @ b).abs().max()) <= MATMUL_AGREE


def test_logistic_sgd_step_agrees(crypten):
    """One step from zero weights on 64 standardised breast-cancer rows, lr 0.5."""
    X_all, y_all, _, _ = breast_cancer()
    X, y = X_all[:64], y_all[:64]
    rows, dims, lr = X.shape[0], X.shape[1], 0.5

    w0 = np.zeros((dims, 1))
    p = 1.0 / (1.0 + np.exp(-(X @ w0)))
    exact = w0 - lr / rows * X.T @ (p - y[:, None])

    Xc, yc = crypten.cryptensor(torch.from_numpy(X)), crypten.cryptensor(torch.from_numpy(y))
    wc = crypten.cryptensor(torch.zeros(dims, 1, dtype=torch.float64))
    pc = Xc.matmul(wc).sigmoid()
    wc = wc - Xc.t().matmul(pc - yc.unsqueeze(1)) * (lr / rows)
    theirs = _plain(wc).numpy()

    # Ours: the real training path (2 parties, horizontal halves, masked once, one batch).
    half = rows // PARTIES
    layout = Layout("horizontal", (half, rows - half), rows, dims, 1, False)
    features = [X[:half], X[half:]]
    labels = [y[:half], y[half:]]

    def step(ctx, f, lab):
        data = mask_inputs(ctx, layout, f, lab, None)
        model = Model.from_public(ctx, "logistic", [w0])
        train(ctx, model, data, epochs=1, batch_size=rows, learning_rate=lr, seed=0, shuffle=False)
        return model.weights[0]

    ours = _ours(simulate(PARTIES, step, features, labels)).numpy()
    assert float(np.abs(ours - theirs).max()) <= STEP_AGREE
    assert float(np.abs(ours - exact).max()) <= STEP_VS_FLOAT64
    assert float(np.abs(theirs - exact).max()) <= STEP_VS_FLOAT64
