"""Checks of the Kubernetes deployment (deploy/k8s) and of ``mpc-certs --k8s-secrets``.

* Every overlay renders with plain ``kubectl kustomize deploy/k8s/overlays/NAME`` and each
  resource passes ``kubernetes-validate`` (strict: unknown fields are errors) against
  Kubernetes 1.32, offline; skipped, with the reason, without kubectl or kubernetes-validate.
* The rendered Jobs: run once (``backoffLimit: 0``, ``restartPolicy: Never``), requests and
  limits, no root, read-only root file system; each mounts only its own Secret (the one
  ``mpc-certs --k8s-secrets`` writes for its name) and its own data; the commands parse with
  the real CLI parsers and address their peers through the declared Services.
* NetworkPolicies of the single cluster, evaluated: every connection the processes make is
  allowed, and nothing beyond the declared peers' ports.
* No key material in the repository; the overlays' scenario and data copies match scenarios/.
"""

from __future__ import annotations

import argparse
import base64
import copy
import itertools
import re
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from mpc.config.scenario import load_scenario
from mpc.core.errors import ConfigError
from mpc.net.certs import create_deployment
from parties.certs import dns_label, secret_name
from parties.common import add_common_args

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))
import k8s_util  # noqa: E402
import netns_util  # noqa: E402

REPO = k8s_util.REPO
DEPLOY = REPO / "deploy"
OVERLAY_NAMES = ("single-cluster", "per-organisation", "consortium")
K8S_VERSION = "1.32"
SCENARIO = REPO / "scenarios" / "three-hospitals.toml"
CERT_NAMES = ("hospital_a", "hospital_b", "hospital_c", "dealer", "launcher")
PORTS = {"party": 7000, "dealer": 7100, "coordinator": 7200}
DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")
DNS_1035 = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    reason = k8s_util.kubectl_unavailable_reason()
    if reason:
        pytest.skip(reason)
    pytest.importorskip("yaml", reason="PyYAML not installed: manifests not parsed")
    return {name: k8s_util.render(k8s_util.OVERLAYS / name) for name in OVERLAY_NAMES}


@pytest.fixture(scope="module")
def validator():
    return pytest.importorskip(
        "kubernetes_validate", reason="kubernetes-validate not installed (pip install it)"
    )


def _fake_secrets() -> dict[str, dict[str, bytes]]:
    return {
        secret_name(n): {"ca.pem": b"ca", f"{n}.pem": b"cert", f"{n}.key": b"key"}
        for n in CERT_NAMES
    }


def _procs(docs: list[dict[str, Any]]) -> dict[str, k8s_util.Process]:
    return k8s_util.processes(docs, _fake_secrets())


def _option(argv: list[str], name: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == name]


def _cert_name(proc: k8s_util.Process) -> str:
    component = proc.labels["app.kubernetes.io/component"]
    if component == "party":
        (name,) = _option(proc.argv, "--name")
        return name
    return {"dealer": "dealer", "coordinator": "launcher"}[component]


def _parse(proc: k8s_util.Process) -> argparse.Namespace:
    """The process's expanded argv parsed by the real parser of its console script."""
    from parties import launch, party

    program, *args = proc.argv
    module = netns_util.console_scripts()[program]
    if module == "parties.dealer":
        parser = argparse.ArgumentParser(prog="mpc-dealer")
        add_common_args(parser)
    else:
        parser = {"parties.party": party._parser, "parties.launch": launch._parser}[module]()
    parser.exit_on_error = False
    try:
        return parser.parse_args(args)
    except (argparse.ArgumentError, SystemExit) as exc:
        pytest.fail(f"{proc.job}: command does not parse: {exc}")


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize("overlay", OVERLAY_NAMES)
def test_overlay_passes_kubernetes_validate(rendered, validator, overlay):
    """Plain `kubectl kustomize` output, every resource strictly valid for Kubernetes 1.32."""
    docs = rendered[overlay]
    assert docs, f"{overlay} renders nothing"
    for doc in docs:
        try:
            validator.validate(doc, K8S_VERSION, strict=True)
        except validator.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{overlay}: {doc['kind']}/{doc['metadata']['name']}: {path}: {exc}")
        except validator.SchemaNotFoundError as exc:  # would only warn in the CLI
            pytest.fail(f"{overlay}: {exc.message}")


def test_validator_rejects_broken_manifests(rendered, validator):
    """The validation is not vacuous: a misspelt field or a wrong type fails."""
    job = next(d for d in rendered["single-cluster"] if d["kind"] == "Job")
    misspelt = copy.deepcopy(job)
    misspelt["spec"]["template"]["spec"]["containers"][0]["argz"] = ["x"]
    wrong_type = copy.deepcopy(job)
    wrong_type["spec"]["backoffLimit"] = "none"
    for bad in (misspelt, wrong_type):
        with pytest.raises(validator.ValidationError):
            validator.validate(bad, K8S_VERSION, strict=True)


def test_overlays_contain_the_processes(rendered):
    kinds = {
        o: {(d["kind"], d["metadata"]["name"]) for d in docs if d["kind"] != "ConfigMap"}
        for o, docs in rendered.items()
    }
    single = ["mpc-hospital-a", "mpc-hospital-b", "mpc-hospital-c", "mpc-dealer", "mpc-launcher"]
    assert kinds["single-cluster"] == {
        (k, n) for k in ("Job", "Service", "NetworkPolicy") for n in single
    } | {("PersistentVolumeClaim", "mpc-launcher-out")}
    assert kinds["per-organisation"] == {
        (k, "mpc-hospital-b") for k in ("Job", "Service", "NetworkPolicy")
    }
    assert kinds["consortium"] == {
        (k, n) for k in ("Job", "Service", "NetworkPolicy") for n in ("mpc-dealer", "mpc-launcher")
    } | {("PersistentVolumeClaim", "mpc-launcher-out")}
    for overlay, docs in rendered.items():
        # Scenario and addresses come from ConfigMaps Kustomize generated (name hash suffix).
        cms = [d["metadata"]["name"] for d in docs if d["kind"] == "ConfigMap"]
        for base in ("mpc-scenario", "mpc-addresses"):
            assert any(re.fullmatch(rf"{base}(-[a-z0-9-]+)?-[a-z0-9]{{10}}", c) for c in cms), (
                overlay, cms,
            )  # fmt: skip


def test_no_key_material_in_the_repository(rendered):
    """Secrets are referenced by name only; nothing under deploy/ holds a key or certificate."""
    for path in DEPLOY.rglob("*"):
        if path.is_file():
            text = path.read_text(errors="replace")
            assert "PRIVATE KEY" not in text and "BEGIN CERTIFICATE" not in text, path
            assert not re.search(r"^kind:\s*Secret\s*$", text, re.M), path
    for overlay, docs in rendered.items():
        assert not [d for d in docs if d["kind"] == "Secret"], overlay


def test_overlay_copies_match_scenarios():
    """Kustomize reads files only below a kustomization: the copies must not drift."""
    data = REPO / "scenarios" / "data" / "breast_cancer"
    pairs = [(k8s_util.OVERLAYS / o / "three-hospitals.toml", SCENARIO) for o in OVERLAY_NAMES]
    single = k8s_util.OVERLAYS / "single-cluster"
    pairs += [(single / f"hospital-{p}" / f"hospital_{p}.csv", data / f"hospital_{p}.csv")
              for p in "abc"]  # fmt: skip
    pairs.append((single / "launcher" / "test.csv", data / "test.csv"))
    for copy_path, original in pairs:
        assert copy_path.read_bytes() == original.read_bytes(), (
            f"{copy_path.relative_to(REPO)} differs from {original.relative_to(REPO)}: "
            "copy it again"
        )


# --------------------------------------------------------------------------- Jobs


@pytest.mark.parametrize("overlay", OVERLAY_NAMES)
def test_jobs_run_once_with_limits_and_no_privileges(rendered, overlay):
    for name, job in k8s_util.by_kind(rendered[overlay], "Job").items():
        spec = job["spec"]
        pod = spec["template"]["spec"]
        assert spec["backoffLimit"] == 0, f"{name}: a failed run must not be re-run"
        assert pod["restartPolicy"] == "Never", name
        assert pod["automountServiceAccountToken"] is False, name
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        (container,) = pod["containers"]
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(container["resources"][kind]), (name, kind)
        sc = container["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"]["drop"] == ["ALL"], name


@pytest.mark.parametrize("overlay", OVERLAY_NAMES)
def test_each_job_mounts_only_its_own_key_and_data(rendered, overlay):
    scenario = load_scenario(k8s_util.OVERLAYS / overlay / "three-hospitals.toml")
    base = scenario.path.parent
    own_data = {p.name: p.data for p in scenario.parties}
    assert scenario.evaluate.data is not None
    own_data["launcher"] = scenario.evaluate.data
    for job, proc in _procs(rendered[overlay]).items():
        name = _cert_name(proc)
        secrets = [m for m in proc.mounts if m.kind == "secret"]
        assert [m.source for m in secrets] == [secret_name(name)], job
        (certs,) = _option(proc.argv, "--certs")
        assert secrets[0].target == certs and secrets[0].read_only
        assert {f.path for f in secrets[0].files} == {"ca.pem", f"{name}.pem", f"{name}.key"}
        writable = {m.target for m in proc.mounts if not m.read_only}
        assert writable <= {"/tmp", "/out"}, f"{job} writes {writable}"
        data = [m for m in proc.mounts if m.target == "/app/scenarios/data"]
        if name == "dealer":
            assert not data, "the dealer never sees data"
            continue
        (mount,) = data
        assert mount.read_only
        if mount.kind == "persistentVolumeClaim":
            continue  # the organisation's own volume
        # A ConfigMap holding exactly this process's file, at the scenario's relative path.
        files = {f"{mount.target}/{f.path}" for f in mount.files}
        assert files == {f"/app/scenarios/{own_data[name].relative_to(base).as_posix()}"}, job


@pytest.mark.parametrize("overlay", OVERLAY_NAMES)
def test_commands_parse_and_address_declared_services(rendered, overlay):
    docs = rendered[overlay]
    procs = _procs(docs)
    scenario = load_scenario(k8s_util.OVERLAYS / overlay / "three-hospitals.toml")
    names = list(scenario.party_names)
    services = k8s_util.by_kind(docs, "Service")
    env = next(iter(procs.values())).env
    for job, proc in procs.items():
        assert "$(" not in " ".join(proc.argv), f"{job}: unresolved variable: {proc.argv}"
        args = _parse(proc)
        assert str(args.scenario) == "/app/scenarios/scenario.toml"
        component = proc.labels["app.kubernetes.io/component"]
        port = int(args.listen.rpartition(":")[2])
        assert args.listen == f"0.0.0.0:{PORTS[component]}"
        assert [p["containerPort"] for p in proc.container["ports"]] == [port]
        # The Service for this Job is mpc-<DNS form of its certificate name>.
        svc = services[f"mpc-{dns_label(_cert_name(proc))}"]
        assert [(p["port"], p["targetPort"]) for p in svc["spec"]["ports"]] == [(port, "mpc")]
        if component == "party":
            assert args.name in names
            peers = dict(p.split("=", 1) for p in args.peer)
            assert sorted(peers) == sorted(names), f"{job}: --peer for every party"
            assert args.dealer == env["MPC_DEALER"] and args.launcher == env["MPC_LAUNCHER"]
        if component == "dealer":
            assert args.launcher == env["MPC_LAUNCHER"]
        if component == "coordinator":
            assert args.coordinator and args.quiet and str(args.out) == "/out"
    if overlay == "single-cluster":
        # In one cluster every address is a Service of the rendering, at the right port.
        party = procs["mpc-hospital-a"]
        args = _parse(party)
        wanted = {f"{n}=mpc-{dns_label(n)}:7000" for n in names}
        assert set(args.peer) == wanted
        assert args.dealer == "mpc-dealer:7100" and args.launcher == "mpc-launcher:7200"
        targets = k8s_util.service_targets(docs, procs)
        assert targets == {f"mpc-{dns_label(n)}": f"mpc-{dns_label(n)}" for n in CERT_NAMES}


def test_names_are_dns_1123(rendered):
    for overlay, docs in rendered.items():
        for d in docs:
            name = d["metadata"]["name"]
            assert DNS_SUBDOMAIN.fullmatch(name), (overlay, d["kind"], name)
            if d["kind"] == "Service":
                assert DNS_1035.fullmatch(name), (overlay, name)


# --------------------------------------------------------------------------- NetworkPolicy


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    return selector.get("matchLabels", {}).items() <= labels.items()


def _rule_allows(
    rules: list[dict[str, Any]], side: str, labels: dict[str, str], port: int
) -> bool:
    """Whether a rule admits a pod with ``labels`` (same namespace) on TCP ``port``."""
    for rule in rules:
        peers_ok = any(
            "podSelector" in p
            and "namespaceSelector" not in p
            and _selects(p["podSelector"], labels)
            for p in rule[side]
        )
        ports_ok = any(
            p["port"] == port and p.get("protocol", "TCP") == "TCP" for p in rule["ports"]
        )
        if peers_ok and ports_ok:
            return True
    return False


def test_network_policies_allow_exactly_the_declared_links(rendered):
    docs = rendered["single-cluster"]
    procs = _procs(docs)
    policies = k8s_util.by_kind(docs, "NetworkPolicy")
    labels = {j: p.labels for j, p in procs.items()}
    policy_of = {}
    for job in procs:
        (pol,) = [
            n for n, p in policies.items() if _selects(p["spec"]["podSelector"], labels[job])
        ]
        policy_of[job] = policies[pol]["spec"]
        assert set(policy_of[job]["policyTypes"]) == {"Ingress", "Egress"}
        for side, key in (("ingress", "from"), ("egress", "to")):
            for rule in policy_of[job].get(side) or []:
                assert rule.get(key) and rule.get("ports"), f"{job}: {side} rule allows all"

    def allowed(src: str, dst: str, port: int) -> bool:
        return _rule_allows(policy_of[src].get("egress") or [], "to", labels[dst], port) and (
            _rule_allows(policy_of[dst].get("ingress") or [], "from", labels[src], port)
        )

    parties = ["mpc-hospital-a", "mpc-hospital-b", "mpc-hospital-c"]
    # The connections the processes open: a party dials the higher-numbered parties, the
    # dealer and the coordinator; the dealer dials the coordinator.
    needed = {(a, b, 7000) for a, b in itertools.combinations(parties, 2)}
    needed |= {(p, "mpc-dealer", 7100) for p in parties}
    needed |= {(p, "mpc-launcher", 7200) for p in [*parties, "mpc-dealer"]}
    # Declared peers: every party lists every other party (either may dial, by scenario order).
    declared = needed | {(b, a, 7000) for a, b in itertools.combinations(parties, 2)}
    got = {
        (s, d, port)
        for s, d in itertools.permutations(procs, 2)
        for port in (7000, 7100, 7200)
        if allowed(s, d, port)
    }
    assert needed <= got, f"blocked: {sorted(needed - got)}"
    assert got <= declared, f"allowed beyond the declared peers: {sorted(got - declared)}"
    # DNS is the only other egress, and only to the cluster DNS.
    for job, spec in policy_of.items():
        for rule in spec.get("egress") or []:
            if {p["port"] for p in rule["ports"]} == {53}:
                (peer,) = rule["to"]
                assert peer["podSelector"]["matchLabels"] == {"k8s-app": "kube-dns"}, job


def test_external_policies_name_their_peers(rendered):
    """Across clusters peers are ipBlocks (one /32 each), and no rule allows everyone."""
    for overlay in ("per-organisation", "consortium"):
        for name, pol in k8s_util.by_kind(rendered[overlay], "NetworkPolicy").items():
            spec = pol["spec"]
            assert set(spec["policyTypes"]) == {"Ingress", "Egress"}
            for side, key in (("ingress", "from"), ("egress", "to")):
                for rule in spec.get(side) or []:
                    assert rule.get(key) and rule.get("ports"), (overlay, name, side)
                    for peer in rule[key]:
                        if "ipBlock" in peer:
                            assert peer["ipBlock"]["cidr"].endswith("/32"), (overlay, name)
        for name, svc in k8s_util.by_kind(rendered[overlay], "Service").items():
            assert svc["spec"]["type"] == "LoadBalancer", (overlay, name)
            assert svc["spec"]["externalTrafficPolicy"] == "Local", "keep client addresses"


# --------------------------------------------------------------------------- mpc-certs


def test_dns_label():
    assert dns_label("hospital_a") == "hospital-a"
    assert dns_label("Lab.North_2") == "lab-north-2"
    assert secret_name("hospital_a") == "mpc-hospital-a-tls"
    for bad in ("_a", "a_", "a" * 60, "x" * 64):
        with pytest.raises(ConfigError, match="Kubernetes form"):
            dns_label(bad)


def _certs(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "parties.certs", *args],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_certs_write_one_secret_per_name(tmp_path):
    yaml = pytest.importorskip("yaml", reason="PyYAML not installed")
    certs, out = tmp_path / "certs", tmp_path / "secrets"
    create_deployment(certs, ["hospital_a"])  # an existing name is exported as it is
    before = (certs / "hospital_a.key").read_bytes()
    res = _certs(str(certs), "hospital_a", "dealer", "--k8s-secrets", str(out))
    assert res.returncode == 0, res.stderr
    assert (certs / "hospital_a.key").read_bytes() == before
    files = sorted(p.name for p in out.iterdir())
    assert files == ["dealer-secret.yaml", "hospital_a-secret.yaml"]
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    for name in ("hospital_a", "dealer"):
        path = out / f"{name}-secret.yaml"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        (doc,) = list(yaml.safe_load_all(path.read_text()))
        assert doc["kind"] == "Secret" and doc["type"] == "Opaque"
        assert doc["metadata"]["name"] == secret_name(name)
        assert "namespace" not in doc["metadata"]
        data = {k: base64.b64decode(v) for k, v in doc["data"].items()}
        assert data == {
            "ca.pem": (certs / "ca.pem").read_bytes(),
            f"{name}.pem": (certs / f"{name}.pem").read_bytes(),
            f"{name}.key": (certs / f"{name}.key").read_bytes(),
        }, "exactly ca.pem and its own certificate and key; never ca.key"


def test_certs_secrets_on_stdout_validate(tmp_path):
    pytest.importorskip("yaml", reason="PyYAML not installed")
    validator = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate missing")
    res = _certs(str(tmp_path), *CERT_NAMES, "--k8s-secrets", "-", "--k8s-namespace", "mpc")
    assert res.returncode == 0, res.stderr
    assert "hospital_a: Secret mpc-hospital-a-tls -> stdout" in res.stderr
    import yaml

    docs = list(yaml.safe_load_all(res.stdout))
    assert [d["metadata"]["name"] for d in docs] == [secret_name(n) for n in CERT_NAMES]
    for d in docs:
        assert d["metadata"]["namespace"] == "mpc"
        validator.validate(d, K8S_VERSION, strict=True)
    assert set(k8s_util.secrets_from_manifests(res.stdout)) == set(_fake_secrets())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["a_b", "a.b", "--k8s-secrets", "-"], "same Kubernetes form 'a-b'"),
        (["_x", "--k8s-secrets", "-"], "no Kubernetes form"),
        (["a", "--k8s-namespace", "mpc"], "--k8s-namespace needs --k8s-secrets"),
        (["a", "--k8s-secrets", "-", "--k8s-namespace", "MPC"], "not a DNS-1123 label"),
    ],
)
def test_certs_k8s_errors_write_nothing(tmp_path, args, message):
    res = _certs(str(tmp_path / "certs"), *args)
    assert res.returncode == 2 and message in res.stderr, res.stderr
    assert not (tmp_path / "certs").exists(), "nothing is written on a bad name"
