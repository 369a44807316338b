"""Helpers for the Kubernetes tests: deploy/k8s rendered by ``kubectl kustomize`` as data.

* :func:`render` runs plain ``kubectl kustomize DIR`` and parses the stream with PyYAML.
* :func:`processes` turns every Job of a rendering into a :class:`Process`: the container's
  command and args with ``$(VAR)`` expanded from its env (``env`` values, ``configMapKeyRef``
  and ``envFrom`` ConfigMaps) the way the kubelet does (:func:`expand`), and its volume mounts
  resolved to files: ConfigMap keys (``items``/``subPath`` honoured), Secret keys (from
  Secrets given as manifests, e.g. ``mpc-certs --k8s-secrets`` output), directories for PVCs
  (their content is not part of a rendering) and ``emptyDir``.
* :func:`service_targets` maps each Service name to the Job whose pod template its selector
  matches, so a test can resolve Service DNS names to the address of that Job's host.
* :func:`materialize` writes a process's mounts under a root directory; :func:`host_argv`
  is netns_util's (console script -> ``python -m``, container paths -> under the root).
"""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import netns_util

__all__ = [
    "REPO",
    "OVERLAYS",
    "File",
    "Mount",
    "Process",
    "kubectl_unavailable_reason",
    "render",
    "by_kind",
    "expand",
    "secrets_from_manifests",
    "processes",
    "service_targets",
    "materialize",
    "host_argv",
]

REPO = netns_util.REPO
OVERLAYS = REPO / "deploy" / "k8s" / "overlays"


def kubectl_unavailable_reason() -> str | None:
    """Why ``kubectl kustomize`` cannot be run here (None if it can)."""
    exe = shutil.which("kubectl")
    if exe is None:
        return "kubectl not installed (Debian/Ubuntu: apt-get install kubectl)"
    res = subprocess.run([exe, "kustomize", "--help"], capture_output=True, timeout=60)
    if res.returncode != 0:
        return "this kubectl has no `kustomize` subcommand"
    return None


def render(directory: Path) -> list[dict[str, Any]]:
    """``kubectl kustomize DIRECTORY`` (no flags), parsed; raises with kubectl's stderr."""
    import yaml

    res = subprocess.run(
        ["kubectl", "kustomize", str(directory)], capture_output=True, text=True, timeout=120
    )
    if res.returncode != 0:
        raise AssertionError(f"kubectl kustomize {directory} failed:\n{res.stderr}")
    return [d for d in yaml.safe_load_all(res.stdout) if d]


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    """The resources of one kind, by metadata.name."""
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubelet's expansion of command/args: ``$(VAR)`` -> its value if VAR is defined (else
    left as is), ``$$`` -> ``$``."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))

    return _REF.sub(sub, text)


def secrets_from_manifests(text: str) -> dict[str, dict[str, bytes]]:
    """Secret name -> key -> decoded bytes, from a YAML stream of Secret manifests."""
    import yaml

    out = {}
    for doc in yaml.safe_load_all(text):
        if doc and doc.get("kind") == "Secret":
            data = doc.get("data") or {}
            out[doc["metadata"]["name"]] = {k: base64.b64decode(v) for k, v in data.items()}
    return out


@dataclass(frozen=True)
class File:
    """A file a volume provides (``path`` "" for a ``subPath`` mount of that one file)."""

    path: str
    data: bytes
    mode: int = 0o444


@dataclass(frozen=True)
class Mount:
    """One volumeMount: the files below ``target`` (or a writable directory)."""

    volume: str
    kind: str  # configMap, secret, persistentVolumeClaim, emptyDir
    source: str  # ConfigMap/Secret/claim name ("" for emptyDir)
    target: str
    read_only: bool
    files: tuple[File, ...]  # empty: a directory (PVC, emptyDir)


@dataclass
class Process:
    """What one Job's (single) container runs, with everything resolved."""

    job: str
    labels: dict[str, str]
    argv: list[str]
    env: dict[str, str]
    mounts: list[Mount] = field(default_factory=list)
    container: dict[str, Any] = field(default_factory=dict)
    pod: dict[str, Any] = field(default_factory=dict)


def _env(container: dict[str, Any], configmaps: Mapping[str, dict[str, Any]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for src in container.get("envFrom") or []:
        ref = src["configMapRef"]["name"]
        env.update({k: str(v) for k, v in (configmaps[ref].get("data") or {}).items()})
    for var in container.get("env") or []:
        if "value" in var:
            env[var["name"]] = expand(str(var["value"]), env)
        else:
            ref = var["valueFrom"]["configMapKeyRef"]
            env[var["name"]] = str(configmaps[ref["name"]]["data"][ref["key"]])
    return env


def _volume_files(
    volume: dict[str, Any],
    configmaps: Mapping[str, dict[str, Any]],
    secrets: Mapping[str, Mapping[str, bytes]],
) -> tuple[str, str, dict[str, File] | None]:
    """(kind, source name, path -> File); files None for a directory (PVC, emptyDir)."""
    if "configMap" in volume:
        spec, name = volume["configMap"], volume["configMap"]["name"]
        data = {k: str(v).encode() for k, v in (configmaps[name].get("data") or {}).items()}
        mode = spec.get("defaultMode", 0o644)
        kind = "configMap"
    elif "secret" in volume:
        spec, name = volume["secret"], volume["secret"]["secretName"]
        if name not in secrets:
            raise KeyError(f"volume {volume['name']}: Secret {name} not provided")
        data = dict(secrets[name])
        mode = spec.get("defaultMode", 0o644)
        kind = "secret"
    elif "persistentVolumeClaim" in volume:
        # Its content is not in the rendering: an (empty) directory here.
        return "persistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"], None
    elif "emptyDir" in volume:
        return "emptyDir", "", None
    else:
        raise KeyError(f"volume {volume['name']}: unsupported type {sorted(volume)}")
    items = spec.get("items")
    pairs = [(i["key"], i["path"]) for i in items] if items else [(k, k) for k in data]
    return kind, name, {p: File(p, data[k], mode) for k, p in pairs}


def processes(
    docs: list[dict[str, Any]], secrets: Mapping[str, Mapping[str, bytes]]
) -> dict[str, Process]:
    """Every Job of a rendering as a :class:`Process` (one container per Job)."""
    configmaps = by_kind(docs, "ConfigMap")
    out = {}
    for name, job in by_kind(docs, "Job").items():
        template = job["spec"]["template"]
        pod = template["spec"]
        (container,) = pod["containers"]
        env = _env(container, configmaps)
        argv = [expand(str(a), env) for a in [*container["command"], *container.get("args", [])]]
        volumes = {v["name"]: v for v in pod.get("volumes") or []}
        mounts = []
        for vm in container.get("volumeMounts") or []:
            kind, source, files = _volume_files(volumes[vm["name"]], configmaps, secrets)
            target, sub = vm["mountPath"], vm.get("subPath")
            if files is None:
                resolved: tuple[File, ...] = ()
            elif sub is not None:
                resolved = (File("", files[sub].data, files[sub].mode),)
            else:
                resolved = tuple(files.values())
            mounts.append(
                Mount(vm["name"], kind, source, target, bool(vm.get("readOnly")), resolved)
            )
        out[name] = Process(
            name, dict(template["metadata"]["labels"]), argv, env, mounts, container, pod
        )
    return out


def service_targets(docs: list[dict[str, Any]], procs: Mapping[str, Process]) -> dict[str, str]:
    """Service name -> the one Job whose pod labels its selector matches."""
    out = {}
    for name, svc in by_kind(docs, "Service").items():
        selector = svc["spec"]["selector"]
        jobs = [j for j, p in procs.items() if selector.items() <= p.labels.items()]
        if len(jobs) != 1:
            raise AssertionError(f"Service {name} selects {jobs}, expected exactly one Job")
        out[name] = jobs[0]
    return out


def materialize(proc: Process, root: Path) -> None:
    """Write the process's mounts under ``root`` (read-only files, writable directories)."""
    for m in proc.mounts:
        base = root / m.target.lstrip("/")
        if not m.files:
            base.mkdir(parents=True, exist_ok=True)
            continue
        for f in m.files:
            dest = base / f.path if f.path else base
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(f.data)
            # The pod's fsGroup makes a 0440 Secret readable; here the owner bits are enough.
            dest.chmod(0o400 if dest.suffix == ".key" else 0o444)


def host_argv(proc: Process, root: Path) -> list[str]:
    """The argv a host runs for ``proc`` with its files under ``root`` (netns_util's rule)."""
    return netns_util.host_argv(netns_util.Service(proc.job, tuple(proc.argv), ()), root)
