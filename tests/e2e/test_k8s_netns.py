"""The single-cluster Kubernetes overlay, run as the rendered manifests say, one network
namespace per Job.

``kubectl kustomize`` renders ``deploy/k8s/overlays/single-cluster`` through a kustomization
on top that only replaces the generated ``mpc-scenario`` ConfigMap with the same scenario at 3
epochs (what an operator does to run another scenario; the Jobs are untouched). The
certificates are the Secrets ``mpc-certs --k8s-secrets`` writes. For every Job, the container's
command and args, with ``$(VAR)`` expanded from its env (the generated ``mpc-addresses``
ConfigMap, ``env`` values) as the kubelet does, run in that Job's namespace, with exactly its
volume mounts as files (ConfigMap keys, Secret keys, a writable directory for the output PVC)
under a per-Job root (:mod:`k8s_util`). Service names resolve, through a per-namespace
``/etc/hosts``, to the address of the Job the Service selects. Every process must exit 0 and
the coordinator must write report.json -- the Jobs complete.

Needs root, ``ip netns``, ``kubectl`` and PyYAML; skipped otherwise (with the reason).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import k8s_util  # noqa: E402
from netns_util import NetnsLab, epoch_seconds, netns_unavailable_reason  # noqa: E402

pytestmark = [pytest.mark.e2e, pytest.mark.netns]

OVERLAY = k8s_util.OVERLAYS / "single-cluster"
PARTIES = ("hospital_a", "hospital_b", "hospital_c")
CERT_NAMES = (*PARTIES, "dealer", "launcher")
JOBS = ("mpc-hospital-a", "mpc-hospital-b", "mpc-hospital-c", "mpc-dealer", "mpc-launcher")
EPOCHS = 3
RUN_TIMEOUT = 150.0


@pytest.fixture(scope="module")
def lab():
    reason = netns_unavailable_reason() or k8s_util.kubectl_unavailable_reason()
    if reason:
        pytest.skip(reason)
    pytest.importorskip("yaml", reason="PyYAML not installed: manifests not parsed")
    with NetnsLab(subnet="10.213.8.0/24") as the_lab:
        try:
            the_lab.build({job: [10 + i] for i, job in enumerate(JOBS)})
        except subprocess.CalledProcessError as exc:
            pytest.fail(f"cannot build the namespace lab: {exc.cmd}: {exc.stderr.strip()}")
        yield the_lab


def _render(tmp_path: Path) -> list[dict[str, Any]]:
    """The overlay with the scenario ConfigMap replaced by the same scenario at EPOCHS."""
    text = (OVERLAY / "three-hospitals.toml").read_text()
    assert "\nepochs = 10\n" in text
    wrapper = tmp_path / "kustomize"
    wrapper.mkdir()
    (wrapper / "three-hospitals.toml").write_text(
        text.replace("\nepochs = 10\n", f"\nepochs = {EPOCHS}\n")
    )
    # kustomize takes only relative paths to other kustomizations.
    (wrapper / "kustomization.yaml").write_text(
        "resources:\n"
        f"  - {os.path.relpath(OVERLAY, wrapper)}\n"
        "configMapGenerator:\n"
        "  - name: mpc-scenario\n"
        "    behavior: replace\n"
        "    files:\n"
        "      - scenario.toml=three-hospitals.toml\n"
    )
    return k8s_util.render(wrapper)


def _secrets(tmp_path: Path) -> dict[str, dict[str, bytes]]:
    """The Secrets an operator applies: ``mpc-certs ... --k8s-secrets -``."""
    res = subprocess.run(
        [sys.executable, "-m", "parties.certs", str(tmp_path / "certs"), *CERT_NAMES,
         "--k8s-secrets", "-"],
        cwd=k8s_util.REPO, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return k8s_util.secrets_from_manifests(res.stdout)


@pytest.mark.timeout(240)
def test_single_cluster_jobs_complete_in_namespaces(lab, tmp_path):
    docs = _render(tmp_path)
    procs = k8s_util.processes(docs, _secrets(tmp_path))
    assert sorted(procs) == sorted(JOBS), "the overlay's Jobs changed"
    for job, proc in procs.items():
        assert "$(" not in " ".join(proc.argv), f"{job}: unresolved variable in {proc.argv}"
    services = k8s_util.service_targets(docs, procs)
    hosts = {svc: lab.ip(job) for svc, job in services.items()}

    roots = {job: tmp_path / "roots" / job for job in procs}
    logs = {job: tmp_path / "logs" / f"{job}.log" for job in procs}
    env = dict(os.environ, PYTHONPATH=str(k8s_util.REPO))
    started: dict[str, subprocess.Popen[bytes]] = {}
    for job, proc in procs.items():
        k8s_util.materialize(proc, roots[job])
        (roots[job] / "app").mkdir(parents=True, exist_ok=True)
        lab.write_hosts(job, hosts)
    try:
        start = time.monotonic()
        for job, proc in procs.items():
            started[job] = lab.popen(
                job,
                k8s_util.host_argv(proc, roots[job]),
                logs[job],
                cwd=roots[job] / "app",
                env=env | proc.env,  # the container's environment, as the kubelet sets it
            )
        codes: dict[str, int | None] = {}
        for job, p in started.items():
            try:
                codes[job] = p.wait(timeout=max(1.0, start + RUN_TIMEOUT - time.monotonic()))
            except subprocess.TimeoutExpired:
                codes[job] = None
        wall = time.monotonic() - start
    finally:
        lab.stop(started.values())

    def dump() -> str:
        return "\n".join(
            f"----- {j} -----\n{logs[j].read_text(errors='replace')[-4000:]}" for j in logs
        )

    assert all(c == 0 for c in codes.values()), f"exit codes {codes}\n{dump()}"
    report_file = roots["mpc-launcher"] / "out" / "report.json"
    assert report_file.is_file(), f"no report.json\n{dump()}"
    report = json.loads(report_file.read_text())
    assert report["epochs"] == EPOCHS
    assert report["parties"] == list(PARTIES)
    assert report["metrics"]["accuracy"] > 0.95, report["metrics"]
    assert (roots["mpc-launcher"] / "out" / "weights.npz").is_file()
    epochs = epoch_seconds(logs["mpc-hospital-a"].read_text())
    assert len(epochs) == EPOCHS, dump()
    print(
        f"k8s single-cluster in namespaces: exit codes {codes}, {wall:.1f} s wall, "
        f"epochs {[round(s, 3) for s in epochs]} s, accuracy {report['metrics']['accuracy']:.4f}"
    )
