"""Helpers for the multi-host test: compose.yaml as data, and a lab of network namespaces.

* :func:`compose_services` reads ``parties/compose.yaml`` (PyYAML if installed, else a small
  parser for the block lists the file uses) and interpolates ``${VAR:-default}`` like compose.
* :func:`host_argv` turns a service's command into the argv a host runs: the console script
  becomes ``python -m MODULE`` (from pyproject's ``[project.scripts]``) and absolute paths --
  the container's mount targets -- move under a per-service root directory. Nothing else
  changes: host names stay service names, resolved per namespace through
  ``/etc/netns/NS/hosts`` (which ``ip netns exec`` binds over ``/etc/hosts``).
* :func:`materialize` copies a service's mounts (and only those) into its root, so a process
  sees the same files as in its container.
* :class:`NetnsLab` creates one namespace per host plus one holding a bridge, veth pairs and
  addresses in a private subnet (inside those namespaces only), runs processes with
  ``ip netns exec`` and removes everything again.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "REPO",
    "COMPOSE",
    "ADDRESS_OPTIONS",
    "Mount",
    "Service",
    "interpolate",
    "parse_compose_text",
    "load_compose",
    "compose_services",
    "console_scripts",
    "host_argv",
    "materialize",
    "netns_unavailable_reason",
    "NetnsLab",
    "listening",
    "epoch_seconds",
]

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "parties" / "compose.yaml"
# CLI options whose value is HOST:PORT (or NAME=HOST:PORT for --peer).
ADDRESS_OPTIONS = ("--listen", "--dealer", "--launcher", "--peer")

# --------------------------------------------------------------------------- compose.yaml

_VAR = re.compile(
    r"\$(?:\$|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\})"
)


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Compose variable substitution: ``${V}``, ``${V:-d}``, ``${V-d}``, ``${V:?e}``, ``$$``."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name, op, arg = m.group("name"), m.group("op"), m.group("arg") or ""
        value = env.get(name)
        if op == ":-":
            return value if value else arg
        if op == "-":
            return value if value is not None else arg
        if op in (":?", "?") and (value is None or (op == ":?" and not value)):
            raise KeyError(f"compose variable {name} is required: {arg}")
        return value or ""

    return _VAR.sub(sub, text)


def _scalar(text: str) -> str:
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    return text


def parse_compose_text(text: str) -> dict:
    """Minimal reader for ``services.NAME.{command,volumes}`` (block or flow lists of scalars).

    Used where PyYAML is missing; the unit tests check that it agrees with PyYAML on
    compose.yaml. Anything else in the file is ignored.
    """
    services: dict[str, dict[str, list[str]]] = {}
    top: str | None = None
    service: str | None = None
    key: str | None = None
    for raw in text.splitlines():
        line = raw.rstrip()
        stripped = line.lstrip()
        if not stripped or stripped.startswith("#"):
            continue
        indent = len(line) - len(stripped)
        if indent == 0:
            top, service, key = stripped.rstrip(":"), None, None
        elif top != "services":
            continue
        elif indent == 2 and stripped.endswith(":"):
            service, key = stripped[:-1], None
            services[service] = {}
        elif indent == 4 and service is not None:
            name, _, rest = stripped.partition(":")
            key = name if name in ("command", "volumes") else None
            if key is not None:
                rest = rest.strip()
                if rest.startswith("[") and rest.endswith("]"):
                    services[service][key] = [
                        _scalar(v) for v in rest[1:-1].split(",") if v.strip()
                    ]
                    key = None
                else:
                    services[service][key] = []
        elif indent >= 6 and service is not None and key is not None and stripped[:2] == "- ":
            services[service][key].append(_scalar(stripped[2:]))
    return {"services": services}


def load_compose(path: Path = COMPOSE) -> dict:
    """The compose file as a dict (PyYAML if importable, else :func:`parse_compose_text`)."""
    text = path.read_text(encoding="utf-8")
    try:
        import yaml
    except ImportError:
        return parse_compose_text(text)
    return yaml.safe_load(text)


@dataclass(frozen=True)
class Mount:
    """One ``SOURCE:TARGET[:ro]`` volume, the source resolved against the compose directory."""

    source: Path
    target: str
    read_only: bool


@dataclass(frozen=True)
class Service:
    name: str
    command: tuple[str, ...]
    mounts: tuple[Mount, ...]
    profiles: tuple[str, ...] = ()


def _mount(spec: str, base: Path) -> Mount:
    parts = spec.split(":")
    if len(parts) not in (2, 3):
        raise ValueError(f"unsupported volume {spec!r} (use SOURCE:TARGET[:ro])")
    source, target = parts[0], parts[1]
    mode = parts[2] if len(parts) == 3 else "rw"
    return Mount((base / source).resolve(), target, "ro" in mode.split(","))


def compose_services(
    env: Mapping[str, str] | None = None, path: Path = COMPOSE, data: dict | None = None
) -> dict[str, Service]:
    """Services of compose.yaml with variables interpolated from ``env`` (default: none set)."""
    env = {} if env is None else env
    doc = load_compose(path) if data is None else data
    out = {}
    for name, svc in (doc.get("services") or {}).items():
        command = svc.get("command") or []
        if isinstance(command, str):
            raise ValueError(f"service {name}: write command as a list, not a string")
        out[name] = Service(
            name,
            tuple(interpolate(str(c), env) for c in command),
            tuple(_mount(interpolate(str(v), env), path.parent) for v in svc.get("volumes") or []),
            tuple(svc.get("profiles") or ()),
        )
    return out


def console_scripts(pyproject: Path = REPO / "pyproject.toml") -> dict[str, str]:
    """``[project.scripts]``: console script name -> module (``parties.party:main``)."""
    scripts = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]["scripts"]
    return {name: target.partition(":")[0] for name, target in scripts.items()}


def host_argv(service: Service, root: Path, python: str = sys.executable) -> list[str]:
    """The argv that runs ``service``'s command on a host whose files live under ``root``.

    ``mpc-party`` -> ``python -m parties.party``; every absolute path argument (a container
    path) -> the same path under ``root``. All other arguments are passed unchanged.
    """
    scripts = console_scripts()
    program, *args = service.command
    if program not in scripts:
        raise ValueError(f"service {service.name}: {program!r} is not a console script")
    out = [python, "-m", scripts[program]]
    for arg in args:
        out.append(str(root / arg.lstrip("/")) if arg.startswith("/") else arg)
    return out


def materialize(service: Service, root: Path) -> None:
    """Copy the service's mounts to ``root`` + target: the files its container would see.

    Copies, not symlinks, so that resolving a path (the scenario's relative data paths) stays
    inside ``root``. Read-only mounts are made read-only. A writable directory mount starts
    empty.
    """
    for m in service.mounts:
        dest = root / m.target.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        if not m.read_only:
            dest.mkdir(parents=True, exist_ok=True)
        elif m.source.is_dir():
            shutil.copytree(m.source, dest)
        else:
            if not m.source.is_file():
                raise FileNotFoundError(f"service {service.name}: mount source {m.source} missing")
            shutil.copy2(m.source, dest)
            dest.chmod(0o400 if m.source.suffix == ".key" else 0o444)


# --------------------------------------------------------------------------- network namespaces


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=30)


def netns_unavailable_reason() -> str | None:
    """Why network namespaces cannot be used here (None if they can)."""
    if os.name != "posix" or os.geteuid() != 0:
        return "needs root (creates network namespaces)"
    if shutil.which("ip") is None:
        return "needs iproute2's `ip`"
    probe = f"mpcprobe-{secrets.token_hex(3)}"
    try:
        res = _ip("netns", "add", probe, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"`ip netns add` failed: {exc}"
    if res.returncode != 0:
        return f"`ip netns add` failed: {res.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return None


def listening(pid: int, port: int) -> bool:
    """Whether a TCP socket listens on ``port`` in the network namespace of process ``pid``."""
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if len(cols) > 3 and cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:
                return True
    return False


_EPOCH = re.compile(r"epoch (\d+)/(\d+) done in ([0-9.]+)s")


def epoch_seconds(log_text: str) -> list[float]:
    """Per-epoch seconds from a party log's ``epoch N/M done in X s`` lines."""
    return [float(m.group(3)) for m in _EPOCH.finditer(log_text)]


@dataclass
class Host:
    name: str
    ns: str
    ips: list[str]


@dataclass
class NetnsLab:
    """Namespaces ``<prefix>-<host>`` on one bridge (in namespace ``<prefix>-br``).

    Use as a context manager; :meth:`close` kills every process started through :meth:`popen`
    (and anything else left in the lab's namespaces), then deletes the namespaces -- which
    removes their veths, the bridge and the addresses -- and the ``/etc/netns`` entries.
    """

    subnet: str = "10.213.7.0/24"
    prefix: str = field(default_factory=lambda: f"mpct{secrets.token_hex(3)}")
    hosts: dict[str, Host] = field(default_factory=dict)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    namespaces: list[str] = field(default_factory=list)
    etc_dirs: list[Path] = field(default_factory=list)
    _made_etc_netns: bool = False

    @property
    def bridge_ns(self) -> str:
        return f"{self.prefix}-br"

    def __enter__(self) -> NetnsLab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _add_ns(self, ns: str) -> None:
        _ip("netns", "add", ns)
        self.namespaces.append(ns)
        _ip("-n", ns, "link", "set", "lo", "up")

    def build(self, layout: Mapping[str, Iterable[int]]) -> None:
        """One namespace per host, with the given host numbers in :attr:`subnet` on eth0."""
        net = ipaddress.ip_network(self.subnet)
        self._add_ns(self.bridge_ns)
        _ip("-n", self.bridge_ns, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.bridge_ns, "link", "set", "br0", "up")
        for i, (name, numbers) in enumerate(layout.items()):
            ns = f"{self.prefix}-{name}"
            self._add_ns(ns)
            port = f"p{i}"
            # Both ends are created directly inside the lab's namespaces: nothing in the root ns.
            _ip(
                "link",
                "add",
                "eth0",
                "netns",
                ns,
                "type",
                "veth",
                "peer",
                "name",
                port,
                "netns",
                self.bridge_ns,
            )
            _ip("-n", self.bridge_ns, "link", "set", port, "master", "br0")
            _ip("-n", self.bridge_ns, "link", "set", port, "up")
            ips = [str(net.network_address + n) for n in numbers]
            for ip in ips:
                _ip("-n", ns, "addr", "add", f"{ip}/{net.prefixlen}", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            self.hosts[name] = Host(name, ns, ips)

    def ip(self, name: str, index: int = 0) -> str:
        return self.hosts[name].ips[index]

    def write_hosts(self, name: str, entries: Mapping[str, str]) -> None:
        """``/etc/hosts`` as seen by processes started in host ``name``'s namespace."""
        etc = Path("/etc/netns")
        if not etc.exists():
            etc.mkdir()
            self._made_etc_netns = True
        d = etc / self.hosts[name].ns
        d.mkdir(exist_ok=True)
        if d not in self.etc_dirs:
            self.etc_dirs.append(d)
        lines = ["127.0.0.1 localhost", "::1 localhost"]
        lines += [f"{ip} {host}" for host, ip in entries.items()]
        (d / "hosts").write_text("\n".join(lines) + "\n")

    def popen(
        self,
        name: str,
        argv: list[str],
        log: Path,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` in host ``name``'s namespace, stdout+stderr to ``log``."""
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "wb") as fh:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", self.hosts[name].ns, *argv],
                stdout=fh,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                env=dict(os.environ if env is None else env),
                start_new_session=True,
            )
        self.procs.append(proc)
        return proc

    def stop(self, procs: Iterable[subprocess.Popen[bytes]], grace: float = 3.0) -> None:
        """SIGTERM, then SIGKILL after ``grace`` seconds; only the given processes (by pid)."""
        procs = [p for p in procs if p.poll() is None]
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)  # its own session: pgid == pid
        end = time.monotonic() + grace
        for p in procs:
            try:
                p.wait(timeout=max(0.1, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(timeout=5)

    def close(self) -> None:
        self.stop(self.procs)
        for ns in self.namespaces:
            # Anything still inside a lab namespace was started by this lab.
            res = _ip("netns", "pids", ns, check=False)
            for pid in res.stdout.split():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
        for ns in reversed(self.namespaces):
            _ip("netns", "del", ns, check=False)
        self.namespaces.clear()
        for d in self.etc_dirs:
            shutil.rmtree(d, ignore_errors=True)
        self.etc_dirs.clear()
        if self._made_etc_netns:
            with contextlib.suppress(OSError):
                Path("/etc/netns").rmdir()
