#!/usr/bin/env bash
# Install CrypTen 0.4.1 for the benchmark peer into the current Python (idempotent).
# `pip install crypten` fails on torch 2.13 (it pins torchvision and an old torch), so install it
# without dependencies and add the ones it really imports. torchvision is NOT needed.
# bench/crypten/run_crypten.py shims torch.onnx._internal.registration before `import crypten`.
set -euo pipefail
PY="${PYTHON:-python3}"
if "$PY" -m pip show crypten 2>/dev/null | grep -qx 'Version: 0.4.1'; then
    echo "crypten 0.4.1 already installed"
else
    "$PY" -m pip install --no-deps crypten==0.4.1
fi
"$PY" -m pip install omegaconf pyyaml onnx scipy pandas scikit-learn
