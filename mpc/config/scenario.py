"""Scenario files: one TOML file per training job, read into frozen dataclasses.

A scenario names the model, the training schedule, how the data is partitioned, the parties and
their CSV files, what may be revealed, and the plaintext-reference metric it should reach. The
schema is documented key by key in ``scenarios/README.md``. :func:`load_scenario` rejects unknown
keys, wrong types and out-of-range values with a :class:`ConfigError` naming the file and the
dotted key. The CSV files themselves are read and checked by :mod:`mpc.config.datasets` (whose
names
this module re-exports for older importers).

Trust: the scenario file is shared configuration, agreed by all parties and not secret;
:func:`scenario_digest` lets parties detect that they run different ones.

Not done here: nothing here reads a data file or opens a connection.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tomllib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, NoReturn

from mpc.config.privacy import PrivacySpec, parse_privacy
from mpc.core.errors import ConfigError
from mpc.net.certs import validate_name

__all__ = [
    "MODEL_KINDS", "PARTITIONS", "REVEAL_WHAT", "ALIGN", "METRICS", "EVALUATE_AT",
    "ModelSpec", "TrainSpec", "DataSpec", "PartySpec", "EvaluateSpec", "RevealRule",
    "RevealSpec", "ExpectSpec", "NetworkSpec", "ProtocolSpec", "COMPARISONS", "AUTO_RTT_MS",
    "Scenario",
    "load_scenario", "scenario_digest",
    # re-exported from mpc.config.datasets
    "Table", "PartyData", "load_table", "load_party_data", "load_evaluation", "feature_order",
    "validate_all", "common_rows", "weights_to_raw_scale",
]

MODEL_KINDS = ("linear", "logistic", "softmax", "mlp")
# lr / B is applied exactly (to < 0.01 %) only in this range (``training._step_factor``).
MIN_LEARNING_RATE = 1e-4
MAX_BATCH = 4096
PARTITIONS = ("horizontal", "vertical")
REVEAL_WHAT = ("weights", "loss", "intersection", "metrics", "statistics")
ALIGN = ("psi", "ordered")
EVALUATE_AT = ("launcher", "parties")
METRICS = ("accuracy", "mse", "r2")
COMPARISONS = ("auto", "fss", "bitwise")
# comparison = "auto", 2 parties: the bitwise comparison below this link round trip. It costs
# 3 more rounds per logistic step (18-21 per softmax/MLP step) than FSS and ~2x less CPU; on
# this project's machines the two break even near 1.2-1.5 ms of one-way delay.
AUTO_RTT_MS = 1.0
_RESERVED = ("launcher", "all")  # reveal targets; cannot be party names
_PROCESS_NAMES = ("dealer", "launcher", "all", "ca")  # names of other processes and files
_LOCAL = "127.0.0.1"


@dataclass(frozen=True)
class ModelSpec:
    """``[model]``: ``kind``; ``hidden`` layer widths (mlp only); ``classes`` (softmax/mlp);
    ``intercept``: a bias per output and hidden unit."""
    kind: str
    hidden: tuple[int, ...] = ()
    classes: int | None = None
    intercept: bool = True

    @property
    def outputs(self) -> int:
        """Width of the model output: 1 for linear/logistic, ``classes`` otherwise."""
        return self.classes if self.classes is not None else 1


@dataclass(frozen=True)
class TrainSpec:
    """``[train]``: mini-batch SGD schedule; ``init_scale=None`` means He scale sqrt(2/fan_in)."""
    epochs: int
    batch_size: int
    learning_rate: float
    shuffle: bool = True
    init: str = "zeros"
    init_scale: float | None = None


@dataclass(frozen=True)
class DataSpec:
    """``[data]``: partition, label column, label holder (vertical), id column, and how vertical
    rows are aligned: ``"psi"`` (private set intersection, the default) or ``"ordered"`` (same
    ids in the same order, checked); None for horizontal partitions."""
    partition: str
    label: str
    label_party: str | None = None
    id_column: str = "id"
    align: str | None = None
    # column -> its public category list; one-hot encoded by the column's owner at load time
    categorical: tuple[tuple[str, tuple[str, ...]], ...] = ()
    # joint standardisation inside MPC (mpc.learn.dataprep); the released model is on raw scale
    standardize: bool = True
    # "error": a missing feature cell is a ConfigError; "mean": imputed with the joint mean
    missing: str = "error"

    # column -> public (lo, hi): with [privacy], each owner clips the column to [lo, hi] and
    # divides it by max(|lo|, |hi|) at load; the launcher rescales the released weights
    bounds: tuple[tuple[str, float, float], ...] = ()

    @property
    def categories(self) -> dict[str, tuple[str, ...]]:
        return dict(self.categorical)

    @property
    def scale_bounds(self) -> dict[str, tuple[float, float]]:
        return {c: (lo, hi) for c, lo, hi in self.bounds}


@dataclass(frozen=True)
class PartySpec:
    """One ``[[party]]``; its pid is its position in the file. ``data`` is absolute; ``test``
    is the party's own test file (absolute; only with ``evaluate.at = "parties"``)."""
    name: str
    data: Path
    host: str = "127.0.0.1"
    port: int | None = None
    test: Path | None = None


@dataclass(frozen=True)
class EvaluateSpec:
    """``[evaluate]``: a held-out CSV read by the launcher only (absolute path or None), or
    ``at = "parties"``: each party's ``test`` file, evaluated jointly inside MPC."""
    data: Path | None = None
    at: str = "launcher"


@dataclass(frozen=True)
class RevealRule:
    """May open ``what`` (weights | loss | intersection) to ``to`` (launcher | all | a party;
    ``loss`` not to a party, ``intersection`` only to all)."""
    what: str
    to: str


@dataclass(frozen=True)
class RevealSpec:
    """``[reveal] allow = [...]``; by default the final weights to the launcher (plus, for a
    vertical partition with ``data.align = "psi"``, the intersection to all)."""
    rules: tuple[RevealRule, ...] = (RevealRule("weights", "launcher"),)

    def allows(self, what: str, to: str) -> bool:
        """Whether a rule lets ``what`` be revealed to ``to`` (``all`` covers every receiver)."""
        return any(r.what == what and r.to in (to, "all") for r in self.rules)


@dataclass(frozen=True)
class ExpectSpec:
    """``[expect]``: plaintext-reference ``metric`` value and its (absolute|relative) tolerance."""
    metric: str
    value: float
    tolerance: float
    relative: bool = False

    def accepts(self, got: float) -> bool:
        """Whether a measured metric is within tolerance of the expected value."""
        bound = self.tolerance * abs(self.value) if self.relative else self.tolerance
        return math.isfinite(got) and abs(got - self.value) <= bound


@dataclass(frozen=True)
class NetworkSpec:
    """``[network]``: receive/connect timeouts and where the dealer and launcher listen."""
    timeout_s: float = 60.0
    connect_timeout_s: float = 30.0
    dealer_host: str = "127.0.0.1"
    dealer_port: int | None = None
    launcher_host: str = "127.0.0.1"
    launcher_port: int | None = None


@dataclass(frozen=True)
class ProtocolSpec:
    """``[protocol]``: ``comparison``, the protocol of every secret comparison (sigmoid, ReLU,
    row max, exp/reciprocal splines, DP clipping, range checks): ``"fss"`` (function secret
    sharing, one online round, dealer keys for parties 0 and 1; with n > 2 those two parties
    together could unmask the compared values), ``"bitwise"`` (4 rounds, safe against any
    coalition of parties without the dealer), ``"auto"``: bitwise for more than 2 parties; for
    2, chosen at run time from the parties' measured link round trip (``parties.common``):
    bitwise below ``AUTO_RTT_MS`` (a fast link, where its cheaper computation wins: 2x on
    loopback), fss at or above (its fewer rounds win across organisations).
    """
    comparison: str = "auto"

    def comparison_for(self, parties: int, rtt_ms: float | None = None) -> str:
        """The protocol used with ``parties`` parties ("fss" or "bitwise"); ``rtt_ms``: the
        measured round trip between 2 parties (auto; without a measurement, fss)."""
        if self.comparison != "auto":
            return self.comparison
        if parties != 2:
            return "bitwise"
        return "bitwise" if rtt_ms is not None and rtt_ms < AUTO_RTT_MS else "fss"

    def allows(self, parties: int, comparison: str) -> bool:
        """Whether a run-time choice of ``comparison`` is consistent with this spec."""
        if self.comparison != "auto":
            return comparison == self.comparison
        return comparison in (("fss", "bitwise") if parties == 2 else ("bitwise",))


@dataclass(frozen=True)
class Scenario:
    """A whole scenario file; ``path`` is the absolute path of the TOML file."""
    name: str
    seed: int
    model: ModelSpec
    train: TrainSpec
    data: DataSpec
    parties: tuple[PartySpec, ...]
    evaluate: EvaluateSpec
    reveal: RevealSpec
    expect: ExpectSpec | None
    network: NetworkSpec
    path: Path
    privacy: PrivacySpec | None = None  # ``[privacy]``: DP-SGD (``mpc.config.privacy``)
    protocol: ProtocolSpec = ProtocolSpec()  # ``[protocol]``: comparison protocol

    @property
    def party_names(self) -> tuple[str, ...]:
        """Party names in pid order."""
        return tuple(p.name for p in self.parties)


# --------------------------------------------------------------------------- TOML reading

_REQUIRED: Any = object()
_TYPES: dict[str, tuple[str, Any]] = {
    "int": ("an integer", int), "float": ("a number", int | float), "bool": ("a boolean", bool),
    "str": ("a non-empty string", str), "ints": ("an array of integers", list),
    "tables": ("an array of tables", list), "table": ("a table", dict)}
_TOP_KEYS = ("name", "seed", "model", "train", "data", "party", "evaluate", "reveal", "expect",
             "network", "privacy", "protocol")


class _Section:
    """One TOML table being read: typed, range-checked access; unknown keys are rejected."""

    def __init__(self, file: str, prefix: str, raw: Any, known: Any) -> None:
        """``known``: the allowed key names, or a dataclass whose field names they are."""
        if not isinstance(raw, dict):
            raise ConfigError(f"{file}: {prefix!r} must be a table, got {type(raw).__name__}")
        self.file, self.prefix, self.raw = file, prefix, raw
        known = [f.name for f in fields(known)] if is_dataclass(known) else known
        for name, value in raw.items():  # before any other check: typos explain the rest
            if name not in known:
                tables = isinstance(value, list) and value and isinstance(value[0], dict)
                what = "table" if isinstance(value, dict) or tables else "key"
                raise ConfigError(f"{file}: unknown {what} {self.key(name)!r}")

    def key(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def fail(self, name: str, message: str) -> NoReturn:
        raise ConfigError(f"{self.file}: {self.key(name)!r} {message}")

    def take(self, name: str, kind: str, default: Any = _REQUIRED, *, low: float = -math.inf,
             high: float = math.inf, strict: bool = False, choices: Sequence[str] = ()) -> Any:
        """The value of key ``name`` checked for type, range (``low``/``high``) and choices."""
        if name not in self.raw:
            if default is _REQUIRED:
                raise ConfigError(f"{self.file}: missing required key {self.key(name)!r}")
            return default  # defaults are valid by construction
        value, (what, cls) = self.raw[name], _TYPES[kind]
        ok = isinstance(value, cls) and not (isinstance(value, bool) and kind in ("int", "float"))
        if kind == "ints":
            ok = ok and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        if not ok or (kind == "str" and not value):
            self.fail(name, f"must be {what}, got {type(value).__name__ if not ok else 'empty'}")
        if kind == "float" and not math.isfinite(value):
            self.fail(name, f"must be a finite number, got {value!r}")
        if choices and value not in choices:
            self.fail(name, f"must be one of {', '.join(map(repr, choices))}, got {value!r}")
        if kind in ("int", "float") and not (low < value if strict else low <= value <= high):
            bound = f"> {low}" if strict else f">= {low}" + (f" and <= {high}" * (high < math.inf))
            self.fail(name, f"must be {bound}, got {value!r}")
        return float(value) if kind == "float" else value

    def sub(self, name: str, known: Any) -> _Section:
        """The sub-table ``name`` (empty if absent)."""
        return _Section(self.file, self.key(name), self.raw.get(name, {}), known)

    def path(self, name: str, base: Path) -> Path:
        """A data file path relative to ``base``.

        Existence is checked when the file is loaded, not here: a party's container holds only
        its own data file, yet reads the same scenario as everyone else.
        """
        return (base / self.take(name, "str")).resolve()


def _apply_override(file: str, raw: dict[str, Any], item: str) -> None:
    """Set ``a.b.c=value`` in the parsed TOML; array elements are addressed as ``party.1.port``."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"{file}: override {item!r} must look like key=value")
    try:
        parsed = tomllib.loads(f"v = {text}")
        value = parsed["v"] if len(parsed) == 1 else text.strip()
    except tomllib.TOMLDecodeError:
        value = text.strip()  # bare words, as in `data.partition=vertical`
    parts = key.split(".")
    node: Any = raw
    for depth, part in enumerate(parts):
        last, where = depth == len(parts) - 1, ".".join(parts[: depth + 1])
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            if last:
                node[int(part)] = value
            node = node[int(part)]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            node = node.setdefault(part, {})
        else:
            raise ConfigError(f"{file}: override {key!r}: no table or element {where!r}")


def _model(top: _Section) -> ModelSpec:
    sec = top.sub("model", ModelSpec)
    kind = sec.take("kind", "str", choices=MODEL_KINDS)
    hidden = tuple(sec.take("hidden", "ints", []))
    if kind == "mlp" and (not hidden or min(hidden) < 1):
        sec.fail("hidden", "must be a non-empty array of positive integers for kind 'mlp'")
    if kind != "mlp" and "hidden" in sec.raw:
        sec.fail("hidden", f"is only allowed for kind 'mlp', not {kind!r}")
    classes = sec.take("classes", "int", None, low=2)
    if (classes is None) == (kind in ("softmax", "mlp")):
        sec.fail("classes", "is required for kinds 'softmax' and 'mlp' and allowed only there")
    return ModelSpec(kind, hidden, classes, sec.take("intercept", "bool", True))


def _train(top: _Section, kind: str) -> TrainSpec:
    sec = top.sub("train", TrainSpec)
    init = sec.take("init", "str", "normal" if kind == "mlp" else "zeros",
                    choices=("zeros", "normal"))
    if kind == "mlp" and init == "zeros":
        sec.fail("init", "must be 'normal' for kind 'mlp' (zero weights never break symmetry)")
    if init != "normal" and "init_scale" in sec.raw:
        sec.fail("init_scale", "is only allowed with init = 'normal'")
    return TrainSpec(
        sec.take("epochs", "int", low=1), sec.take("batch_size", "int", low=1, high=MAX_BATCH),
        sec.take("learning_rate", "float", low=MIN_LEARNING_RATE),
        sec.take("shuffle", "bool", True),
        init, sec.take("init_scale", "float", None, low=0, strict=True))


def _parties(file: str, top: _Section, base: Path) -> tuple[PartySpec, ...]:
    items = top.take("party", "tables")
    if len(items) < 2:
        top.fail("party", f"needs at least 2 [[party]] tables, got {len(items)}")
    parties: list[PartySpec] = []
    for pid, item in enumerate(items):
        sec = _Section(file, f"party.{pid}", item, PartySpec)
        name = sec.take("name", "str")
        if name in _PROCESS_NAMES or name in (p.name for p in parties):
            sec.fail("name", f"must be unique and not one of the reserved names "
                             f"{', '.join(_PROCESS_NAMES)}; got {name!r}")
        try:
            validate_name(name)  # it is also the party's certificate name
        except ConfigError as exc:
            sec.fail("name", str(exc))
        parties.append(PartySpec(name, sec.path("data", base), sec.take("host", "str", _LOCAL),
                                 sec.take("port", "int", None, low=1, high=65535),
                                 sec.path("test", base) if "test" in sec.raw else None))
    return tuple(parties)


def _reveal(top: _Section, names: tuple[str, ...], data: DataSpec) -> RevealSpec:
    psi = data.align == "psi"
    if "reveal" not in top.raw:
        return RevealSpec((*RevealSpec().rules, *[RevealRule("intersection", "all")] * psi))
    sec, rules = top.sub("reveal", ["allow"]), []
    for i, item in enumerate(sec.take("allow", "tables")):
        rule_sec = _Section(sec.file, f"reveal.allow.{i}", item, RevealRule)
        rule = RevealRule(rule_sec.take("what", "str", choices=REVEAL_WHAT),
                          rule_sec.take("to", "str", choices=_RESERVED + names))
        if rule.what == "intersection" and not psi:
            rule_sec.fail("what", "'intersection' is only revealed by data.align = 'psi' "
                          "(vertical partitions)")
        if rule.what == "intersection" and rule.to != "all":
            rule_sec.fail("to", "must be 'all' for what = 'intersection' (PSI gives every "
                          f"party the intersection), got {rule.to!r}")
        if rule.what == "loss" and rule.to not in _RESERVED:
            # The per-epoch loss is opened to the launcher only (mpc.learn.loss); "all" covers it.
            raise ConfigError(f"{sec.file}: reveal.allow.{i}.to: the loss is revealed to "
                              f"\"launcher\" or \"all\", not to a party ({rule.to!r})")
        if rule.what == "statistics" and (rule.to not in _RESERVED or not data.standardize):
            # the joint mean/std of mpc.learn.dataprep go to the launcher's report.json only
            rule_sec.fail("what", "'statistics' needs data.standardize = true and "
                          f"to = 'launcher' or 'all', got to = {rule.to!r}")
        rules.append(rule)
    return RevealSpec(tuple(rules))


def _expect(top: _Section, kind: str) -> ExpectSpec | None:
    if "expect" not in top.raw:
        return None
    sec = top.sub("expect", ExpectSpec)
    metric = sec.take("metric", "str", choices=METRICS)
    if (metric == "accuracy") != (kind != "linear"):
        sec.fail("metric", f"must fit model kind {kind!r} (accuracy for classifiers, mse or r2 "
                 f"for linear), got {metric!r}")
    return ExpectSpec(metric, sec.take("value", "float"), sec.take("tolerance", "float", low=0),
                      sec.take("relative", "bool", False))


def _evaluate(top: _Section, base: Path, parties: tuple[PartySpec, ...]) -> EvaluateSpec:
    """``[evaluate]``: ``at = "launcher"`` (``data``, read by the launcher) or ``"parties"``
    (every party's ``test`` file; the launcher holds none)."""
    sec = top.sub("evaluate", EvaluateSpec)
    at = sec.take("at", "str", "launcher", choices=EVALUATE_AT)
    if at == "parties" and "data" in sec.raw:
        sec.fail("data", "is not allowed with evaluate.at = 'parties' (the parties hold the "
                 "test rows: set party.test in every [[party]] table instead)")
    for pid, party in enumerate(parties):
        if (party.test is None) == (at == "parties"):
            need = "is required in every [[party]] table" if at == "parties" else \
                "is only allowed"
            raise ConfigError(f"{top.file}: 'party.{pid}.test' {need} with evaluate.at = "
                              f"'parties' (evaluate.at is {at!r})")
    return EvaluateSpec(sec.path("data", base) if "data" in sec.raw else None, at)


def _bounds(sec: _Section, data: DataSpec) -> tuple[tuple[str, float, float], ...]:
    """``data.bounds = {column = [lo, hi]}``: public per-column bounds (used with [privacy])."""
    out = []
    for column, pair in sec.take("bounds", "table", {}).items():
        key = f"bounds.{column}"
        if column in (data.label, data.id_column) or column in data.categories:
            sec.fail(key, "must be a numeric feature column (not the label, the id column or a "
                     "categorical column)")
        ok = (isinstance(pair, list) and len(pair) == 2
              and all(isinstance(v, int | float) and not isinstance(v, bool) for v in pair)
              and all(math.isfinite(v) for v in pair))
        if not ok or not pair[0] < pair[1]:
            sec.fail(key, "must be [lo, hi] with finite numbers lo < hi")
        out.append((str(column), float(pair[0]), float(pair[1])))
    return tuple(out)


def _categorical(sec: _Section, data: DataSpec) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """``data.categorical = {column = ["a", "b", ...]}``: public category lists."""
    table = sec.take("categorical", "table", {})
    out = []
    for column, values in table.items():
        key = f"categorical.{column}"
        if column in (data.label, data.id_column):
            sec.fail(key, "must be a feature column, not data.label or data.id_column")
        if (not isinstance(values, list) or not values
                or not all(isinstance(v, str) and v.strip() == v and v for v in values)):
            sec.fail(key, "must be a non-empty array of non-empty strings (no surrounding "
                     "spaces): the column's public category list")
        if len(set(values)) != len(values):
            sec.fail(key, "lists a category twice")
        out.append((str(column), tuple(values)))
    return tuple(out)


def _build(file: str, path: Path, raw: dict[str, Any]) -> Scenario:
    top = _Section(file, "", raw, _TOP_KEYS)
    name, seed = top.take("name", "str"), top.take("seed", "int", low=0, high=2**63 - 1)
    model = _model(top)
    train = _train(top, model.kind)
    sec = top.sub("data", DataSpec)
    partition = sec.take("partition", "str", choices=PARTITIONS)
    if partition != "vertical" and "align" in sec.raw:
        sec.fail("align", "is only allowed for partition 'vertical'")
    data = DataSpec(partition, sec.take("label", "str"), sec.take("label_party", "str", None),
                    sec.take("id_column", "str", "id"),
                    sec.take("align", "str", "psi", choices=ALIGN) if partition == "vertical"
                    else None)
    parties = _parties(file, top, path.parent)
    names = tuple(p.name for p in parties)
    if data.label == data.id_column:
        sec.fail("label", f"must differ from data.id_column ({data.id_column!r})")
    if (data.partition == "vertical") != (data.label_party is not None):
        sec.fail("label_party", "is required for partition 'vertical' and allowed only there")
    if data.label_party is not None and data.label_party not in names:
        sec.fail("label_party", f"must name a party ({', '.join(names)}), "
                 f"got {data.label_party!r}")
    data = replace(data, categorical=_categorical(sec, data), bounds=_bounds(sec, data),
                   # with [privacy], joint statistics would leak outside the budget
                   # (mpc.config.privacy)
                   standardize=sec.take("standardize", "bool", "privacy" not in raw),
                   missing=sec.take("missing", "str", "error", choices=("error", "mean")))
    if data.missing == "mean" and not data.standardize:
        sec.fail("missing", "= 'mean' needs data.standardize = true (the joint mean is "
                 "computed by the data preparation inside MPC)")
    evaluate = _evaluate(top, path.parent, parties)
    reveal, expect = _reveal(top, names, data), _expect(top, model.kind)
    if evaluate.at == "parties" and "reveal" not in top.raw:  # the default policy
        reveal = RevealSpec((*reveal.rules, RevealRule("metrics", "launcher")))
    sec = top.sub("network", NetworkSpec)
    network = NetworkSpec(
        sec.take("timeout_s", "float", 60.0, low=0, strict=True),
        sec.take("connect_timeout_s", "float", 30.0, low=0, strict=True),
        sec.take("dealer_host", "str", _LOCAL),
        sec.take("dealer_port", "int", None, low=1, high=65535),
        sec.take("launcher_host", "str", _LOCAL),
        sec.take("launcher_port", "int", None, low=1, high=65535))
    privacy = None
    if data.bounds and not model.intercept:
        raise ConfigError(f"{file}: 'data.bounds' needs model.intercept = true (each bounded "
                          "column is centred, and the released model's bias undoes it)")
    if data.bounds and "privacy" not in raw:
        raise ConfigError(f"{file}: 'data.bounds' scales columns for DP-SGD and is used only "
                          "with a [privacy] table")
    if "privacy" in raw:
        privacy = parse_privacy(top.sub("privacy", PrivacySpec), raw, parties=len(parties),
                                kind=model.kind, partition=data.partition,
                                reveal_whats=tuple(r.what for r in reveal.rules))
        if model.kind == "mlp" and model.intercept:
            raise ConfigError(f"{file}: [privacy] with kind 'mlp' needs model.intercept = false "
                              "for now (the DP step's per-layer clipping does not carry the "
                              "hidden layers' bias column yet)")
    protocol = ProtocolSpec(top.sub("protocol", ProtocolSpec).take(
        "comparison", "str", "auto", choices=COMPARISONS))
    return Scenario(name, seed, model, train, data, parties, evaluate, reveal, expect, network,
                    path, privacy, protocol)


def load_scenario(path: str | os.PathLike[str], overrides: Sequence[str] = ()) -> Scenario:
    """Read and validate a scenario file; ``overrides`` are ``dotted.key=toml-value`` strings.

    Data paths are resolved relative to the scenario file; their existence and contents are
    checked by :func:`mpc.config.datasets.validate_all` and
    :func:`mpc.config.datasets.load_party_data`.
    """
    file = os.fspath(path)
    try:
        raw = tomllib.loads(Path(file).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read scenario file ({exc.strerror})") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{file}: invalid TOML: {exc}") from exc
    for item in overrides:
        _apply_override(file, raw, item)
    return _build(file, Path(file).resolve(), raw)


def scenario_digest(s: Scenario) -> str:
    """SHA-256 (hex) of a canonical JSON of everything the parties must agree on.

    Left out: data and evaluate file paths, hosts, ports and the scenario path, which
    legitimately differ between machines.
    """
    doc = {
        "format": "mpc-scenario/1", "name": s.name, "seed": s.seed, "model": asdict(s.model),
        "train": asdict(s.train), "data": asdict(s.data),
        "parties": [p.name for p in s.parties], "reveal": [asdict(r) for r in s.reveal.rules],
        "evaluate_at": s.evaluate.at,
        "expect": asdict(s.expect) if s.expect else None,
        "network": {"timeout_s": s.network.timeout_s,
                    "connect_timeout_s": s.network.connect_timeout_s},
        "comparison": s.protocol.comparison,  # "auto" is resolved at run time
    }
    if s.privacy is not None:
        doc["privacy"] = asdict(s.privacy)
    blob = json.dumps(doc, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


# Backward-compatible re-export (parties/ and older tests import these from here). At the end, so
# that mpc.config.scenario is complete whichever of the two modules is imported first;
# mpc.config.datasets
# imports mpc.config.scenario for annotations only.
from mpc.config.datasets import (  # noqa: E402
    PartyData,
    Table,
    common_rows,
    feature_order,
    load_evaluation,
    load_party_data,
    load_table,
    validate_all,
    weights_to_raw_scale,
)
