"""Tests for mpc.config.scenario: shipped scenarios, overrides, and every class of bad input."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from mpc.config.datasets import (
    feature_order,
    load_evaluation,
    load_party_data,
    load_table,
    validate_all,
)
from mpc.config.scenario import ExpectSpec, RevealRule, RevealSpec, load_scenario, scenario_digest
from mpc.core.errors import ConfigError
from tests.conftest import scenario_text

SCENARIOS = Path(__file__).resolve().parents[2] / "scenarios"
SHIPPED = sorted(SCENARIOS.glob("*.toml"))

GOOD_CSV = "x1,x2,target\n0.5,-1.0,1\n1.5,2.0,0\n-0.25,0.0,1\n"
BASE = scenario_text(name="tiny", epochs=2)
VERTICAL = scenario_text('label_party = "a"', name="tiny-vertical", epochs=2,
                         partition="vertical")


def write(tmp_path: Path, toml: str = BASE, **files: str) -> Path:
    """Write ``scenario.toml`` plus CSV files (``a=...`` -> a.csv); a.csv/b.csv default good."""
    contents = {"a": GOOD_CSV, "b": GOOD_CSV, **files}
    for name, text in contents.items():
        (tmp_path / f"{name}.csv").write_text(text)
    path = tmp_path / "scenario.toml"
    path.write_text(toml)
    return path


def check(exc: pytest.ExceptionInfo[ConfigError], *fragments: str) -> None:
    for fragment in fragments:
        assert fragment in str(exc.value), f"{fragment!r} not in {str(exc.value)!r}"


# --------------------------------------------------------------------------- shipped scenarios


def test_scenarios_are_shipped() -> None:
    names = {p.stem for p in SHIPPED}
    assert {"three-hospitals", "two-clinics", "two-banks-vertical", "three-banks-vertical",
            "diabetes-linear", "digits-softmax", "digits-mlp"} <= names


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_scenario_loads_and_validates(path: Path) -> None:
    s = load_scenario(path)
    assert s.name == path.stem and s.path == path.resolve()
    assert len(s.parties) >= 2 and s.expect is not None
    validate_all(s)
    order = feature_order(s)
    parts = [load_party_data(s, name) for name in s.party_names]
    ev = load_evaluation(s)
    assert ev is not None and ev.labels is not None
    assert ev.features.shape == (len(ev.labels), len(order))
    assert ev.features.dtype == np.float64 and ev.feature_names == tuple(order)
    if s.data.partition == "horizontal":
        assert all(p.feature_names == tuple(order) and p.labels is not None for p in parts)
    else:
        assert [n for p in parts for n in p.feature_names] == order
        assert [p.labels is not None for p in parts] == [n == s.data.label_party
                                                         for n in s.party_names]
        assert all(p.ids is not None and p.ids.dtype == np.int64 for p in parts)


def test_default_scenario_matches_issue() -> None:
    s = load_scenario(SCENARIOS / "three-hospitals.toml")
    assert (s.model.kind, s.data.partition, len(s.parties)) == ("logistic", "horizontal", 3)
    assert (s.train.epochs, s.train.batch_size, s.train.learning_rate) == (10, 64, 0.5)
    assert s.train.init == "zeros" and s.train.shuffle
    assert s.reveal == RevealSpec((RevealRule("weights", "launcher"),))
    assert s.network.timeout_s == 60.0 and s.network.dealer_port is None


def test_mlp_defaults_and_vertical_fields() -> None:
    mlp = load_scenario(SCENARIOS / "digits-mlp.toml")
    assert mlp.model.hidden == (32,) and mlp.model.classes == 10 and mlp.model.outputs == 10
    assert mlp.train.init == "normal" and mlp.train.init_scale is None
    banks = load_scenario(SCENARIOS / "two-banks-vertical.toml")
    assert banks.data.label_party == "bank_a" and banks.data.id_column == "id"


def test_party_data_shapes() -> None:
    s = load_scenario(SCENARIOS / "two-banks-vertical.toml")
    a, b = load_party_data(s, "bank_a"), load_party_data(s, "bank_b")
    assert a.features.shape[1] == 15 and b.features.shape[1] == 15 and b.labels is None
    assert a.labels is not None and set(np.unique(a.labels)) <= {0.0, 1.0}
    # Unaligned files (aligned at run time by PSI): own row orders, overlapping id sets.
    assert a.ids is not None and b.ids is not None and not np.array_equal(a.ids, b.ids)
    assert len(np.intersect1d(a.ids, b.ids)) == 350


# --------------------------------------------------------------------------- overrides, digest


def test_overrides() -> None:
    path = SCENARIOS / "three-hospitals.toml"
    s = load_scenario(path, ["train.epochs=2", "seed=3", "train.learning_rate = 0.25",
                             "party.1.port=7001", "network.timeout_s=5"])
    assert (s.train.epochs, s.seed, s.train.learning_rate) == (2, 3, 0.25)
    assert s.parties[1].port == 7001 and s.network.timeout_s == 5.0
    # Bare words fall back to strings; arrays parse as TOML.
    s = load_scenario(SCENARIOS / "digits-mlp.toml", ["model.hidden=[8, 4]", "train.init=normal"])
    assert s.model.hidden == (8, 4)


@pytest.mark.parametrize(("item", "fragments"), [
    ("train.epoch=2", ["unknown key 'train.epoch'"]),
    ("train.epochs=0", ["'train.epochs'", ">= 1"]),
    ("train.epochs=two", ["'train.epochs'", "integer"]),
    ("epochs", ["override 'epochs'", "key=value"]),
    ("party.7.port=1", ["'party.7'"]),
    ("data.partition=diagonal", ["'data.partition'", "'diagonal'"]),
])
def test_bad_overrides(item: str, fragments: list[str]) -> None:
    path = SCENARIOS / "three-hospitals.toml"
    with pytest.raises(ConfigError) as exc:
        load_scenario(path, [item])
    check(exc, "three-hospitals.toml", *fragments)


def test_digest() -> None:
    path = SCENARIOS / "three-hospitals.toml"
    base = scenario_digest(load_scenario(path))
    assert len(base) == 64 and base == scenario_digest(load_scenario(path))
    # Ports and hosts may differ between machines; the schedule may not.
    assert base == scenario_digest(load_scenario(path, ["party.0.port=9000",
                                                         "network.dealer_host='10.0.0.1'"]))
    assert base != scenario_digest(load_scenario(path, ["train.epochs=2"]))
    assert base != scenario_digest(load_scenario(SCENARIOS / "two-clinics.toml"))


def test_reveal_and_expect(tmp_path: Path) -> None:
    toml = BASE + ('[reveal]\nallow = [{what = "loss", to = "all"}, '
                   '{what = "weights", to = "b"}]\n'
                   '[expect]\nmetric = "accuracy"\nvalue = 0.9\ntolerance = 0.02\n')
    s = load_scenario(write(tmp_path, toml))
    assert s.reveal.allows("loss", "a") and s.reveal.allows("loss", "launcher")
    assert s.reveal.allows("weights", "b") and not s.reveal.allows("weights", "a")
    assert not s.reveal.allows("weights", "launcher")
    assert s.expect == ExpectSpec("accuracy", 0.9, 0.02)
    assert s.expect.accepts(0.915) and not s.expect.accepts(0.87)
    assert ExpectSpec("mse", 0.5, 0.1, relative=True).accepts(0.54)
    assert not ExpectSpec("mse", 0.5, 0.1, relative=True).accepts(0.56)


@pytest.mark.parametrize("rule, message", [
    ('{what = "predictions", to = "b"}', "reveal.allow.0.what"),
    ('{what = "loss", to = "b"}', "the loss is revealed to \"launcher\" or \"all\""),
])
def test_reveal_kinds_without_a_code_path_are_rejected(tmp_path: Path, rule: str,
                                                       message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_scenario(write(tmp_path, BASE + f"[reveal]\nallow = [{rule}]\n"))


# --------------------------------------------------------------------------- bad scenario files


@pytest.mark.parametrize(("old", "new", "fragments"), [
    ("epochs = 2", "epoch = 2", ["unknown key 'train.epoch'"]),
    ("seed = 1", "seed = 1\n[extra]\nx = 1", ["unknown table 'extra'"]),
    ('name = "b"', 'name = "b"\nweight = 2', ["unknown key 'party.1.weight'"]),
    ("epochs = 2", 'epochs = "2"', ["'train.epochs'", "must be an integer, got str"]),
    ("epochs = 2", "epochs = 2.5", ["'train.epochs'", "integer"]),
    ("learning_rate = 0.5", "learning_rate = true", ["'train.learning_rate'", "number"]),
    ("learning_rate = 0.5", "learning_rate = 0", ["'train.learning_rate'", ">= 0.0001"]),
    ("learning_rate = 0.5", "learning_rate = 5e-5", ["'train.learning_rate'", ">= 0.0001"]),
    ("batch_size = 2", "batch_size = 4097", ["'train.batch_size'", "<= 4096", "4097"]),
    ("learning_rate = 0.5", "learning_rate = nan", ["'train.learning_rate'", "finite"]),
    ("epochs = 2", "epochs = 0", ["'train.epochs'", ">= 1"]),
    ("batch_size = 2", "batch_size = -1", ["'train.batch_size'", ">= 1"]),
    ("epochs = 2\n", "", ["missing required key 'train.epochs'"]),
    ("seed = 1\n", "", ["missing required key 'seed'"]),
    ('kind = "logistic"', 'kind = "svm"', ["'model.kind'", "'svm'"]),
    ('kind = "logistic"', 'kind = "logistic"\nhidden = [4]', ["'model.hidden'", "mlp"]),
    ('kind = "logistic"', 'kind = "mlp"\nclasses = 3\nhidden = []', ["'model.hidden'"]),
    ('kind = "logistic"', 'kind = "mlp"\nclasses = 3\nhidden = [0]', ["'model.hidden'"]),
    ('kind = "logistic"', 'kind = "softmax"', ["'model.classes'", "required"]),
    ('kind = "logistic"', 'kind = "softmax"\nclasses = 1', ["'model.classes'", ">= 2"]),
    ('kind = "logistic"\n[train]\n', 'kind = "mlp"\nclasses = 3\nhidden = [4]\n[train]\n'
     'init = "zeros"\n', ["'train.init'", "symmetry"]),
    ('partition = "horizontal"', 'partition = "vertical"', ["'data.label_party'"]),
    ('label = "target"', 'label = "target"\nlabel_party = "a"', ["'data.label_party'"]),
    ('name = "b"', 'name = "a"', ["'party.1.name'", "unique"]),
    ('name = "b"', 'name = "launcher"', ["'party.1.name'"]),
    ('name = "b"\ndata = "b.csv"\n', 'name = "b"\ndata = "b.csv"\nport = 70000\n',
     ["'party.1.port'", "65535"]),
    ("[[party]]\nname = \"b\"\ndata = \"b.csv\"\n", "", ["'party'", "at least 2"]),
    ("seed = 1", "seed = 1\n[reveal]\nallow = [{what = \"secrets\", to = \"all\"}]",
     ["'reveal.allow.0.what'"]),
    ("seed = 1", "seed = 1\n[reveal]\nallow = [{what = \"loss\", to = \"zed\"}]",
     ["'reveal.allow.0.to'", "'zed'"]),
    ("seed = 1", "seed = 1\n[expect]\nmetric = \"mse\"\nvalue = 1.0\ntolerance = 0.1",
     ["'expect.metric'", "logistic"]),
    ("seed = 1", "seed = 1\n[network]\ntimeout_s = 0", ["'network.timeout_s'"]),
    ("seed = 1", "seed = = 1", ["invalid TOML"]),
])
def test_bad_scenario_file(tmp_path: Path, old: str, new: str, fragments: list[str]) -> None:
    assert old in BASE
    path = write(tmp_path, BASE.replace(old, new, 1))
    with pytest.raises(ConfigError) as exc:
        load_scenario(path)
    check(exc, "scenario.toml", *fragments)


def test_party_must_be_array_of_tables(tmp_path: Path) -> None:
    path = write(tmp_path, "party = 3\n" + BASE.split("[[party]]")[0])
    with pytest.raises(ConfigError) as exc:
        load_scenario(path)
    check(exc, "scenario.toml", "'party'", "array of tables")


def test_vertical_label_party_must_be_a_party(tmp_path: Path) -> None:
    path = write(tmp_path, VERTICAL.replace('label_party = "a"', 'label_party = "z"'))
    with pytest.raises(ConfigError) as exc:
        load_scenario(path)
    check(exc, "scenario.toml", "'data.label_party'", "'z'")


@pytest.mark.parametrize(("old", "new", "missing"), [
    ('data = "b.csv"', 'data = "missing.csv"', "missing.csv"),
    ("seed = 1", 'seed = 1\n[evaluate]\ndata = "nope.csv"', "nope.csv"),
])
def test_missing_data_file_fails_validation(tmp_path: Path, old: str, new: str,
                                            missing: str) -> None:
    """A data file is checked when loaded (a party container holds only its own file)."""
    path = write(tmp_path, BASE.replace(old, new, 1))
    scenario = load_scenario(path)
    with pytest.raises(ConfigError) as exc:
        validate_all(scenario)
    check(exc, missing)


def test_missing_scenario_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load_scenario(tmp_path / "absent.toml")
    check(exc, "absent.toml")


# --------------------------------------------------------------------------- bad data files


@pytest.mark.parametrize(("text", "fragments"), [
    ("", ["empty file"]),
    ("x1,x2,target\n", ["no data rows"]),
    ("x1,x1,target\n1,2,0\n", ["duplicate 'x1'"]),
    ("x1,x2,target\n1,2,0\n1,nan,1\n", ["line 3", "column 'x2'", "NaN"]),
    ("x1,x2,target\n1,inf,0\n", ["line 2", "column 'x2'", "finite"]),
    ("x1,x2,target\n1,abc,0\n", ["line 2", "column 'x2'", "not a number"]),
    ("x1,x2,target\n1,,0\n", ["line 2", "column 'x2'", "missing value"]),
    ("x1,x2,target\n1,NA,0\n", ["line 2", "column 'x2'", "missing value"]),
    ("x1,x2,target\n1,2,0\n1,2\n", ["line 3", "2 cells", "header has 3"]),
])
def test_bad_table(tmp_path: Path, text: str, fragments: list[str]) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(ConfigError) as exc:
        load_table(path)
    check(exc, "bad.csv", *fragments)
    assert "abc" not in str(exc.value)  # cell values are secret inputs: never quoted


def test_table_reads_numbers(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text(" a , b\n1, 2.5\n\n-3e2,0\n")
    table = load_table(path)
    assert table.columns == ("a", "b") and table.values.dtype == np.float64
    assert table.values.tolist() == [[1.0, 2.5], [-300.0, 0.0]]
    assert table.lines.tolist() == [2, 4]


def validate_error(tmp_path: Path, toml: str = BASE, **files: str) -> str:
    s = load_scenario(write(tmp_path, toml, **files))
    with pytest.raises(ConfigError) as exc:
        validate_all(s)
    return str(exc.value)


def test_missing_label_column(tmp_path: Path) -> None:
    message = validate_error(tmp_path, b="x1,x2\n1,2\n")
    assert "b.csv" in message and "'target'" in message


def test_nan_cell_in_party_file(tmp_path: Path) -> None:
    message = validate_error(tmp_path, a="x1,x2,target\n1,NaN,0\n")
    assert "a.csv" in message and "'x2'" in message and "line 2" in message


def test_non_numeric_cell_in_party_file(tmp_path: Path) -> None:
    message = validate_error(tmp_path, b="x1,x2,target\n1,2,0\nAlice,2,1\n")
    assert "b.csv" in message and "'x1'" in message and "line 3" in message
    assert "Alice" not in message


def test_horizontal_feature_count_mismatch(tmp_path: Path) -> None:
    message = validate_error(tmp_path, b="x1,x2,x3,target\n1,2,3,0\n")
    assert "a.csv" in message and "b.csv" in message and "3 feature columns" in message


def test_horizontal_feature_name_mismatch(tmp_path: Path) -> None:
    message = validate_error(tmp_path, b="x1,y2,target\n1,2,0\n")
    assert "a.csv" in message and "b.csv" in message and "'y2'" in message


VERT_A = "id,x1,target\n10,0.5,1\n11,1.5,0\n12,-1,1\n"
VERT_B = "id,x2,x3\n10,1,2\n11,3,4\n12,5,6\n"


def test_vertical_good(tmp_path: Path) -> None:
    s = load_scenario(write(tmp_path, VERTICAL, a=VERT_A, b=VERT_B))
    validate_all(s)
    assert feature_order(s) == ["x1", "x2", "x3"]
    b = load_party_data(s, "b")
    assert b.labels is None and b.ids is not None and b.ids.tolist() == [10, 11, 12]


ORDERED = VERTICAL.replace('label_party = "a"', 'label_party = "a"\nalign = "ordered"')


def test_vertical_misaligned_ids(tmp_path: Path) -> None:
    b = "id,x2,x3\n10,1,2\n12,3,4\n11,5,6\n"
    message = validate_error(tmp_path, ORDERED, a=VERT_A, b=b)
    assert "b.csv" in message and "line 3" in message and "'id'" in message


def test_vertical_row_count_mismatch(tmp_path: Path) -> None:
    message = validate_error(tmp_path, ORDERED, a=VERT_A, b="id,x2\n10,1\n11,2\n")
    assert "b.csv" in message and "a.csv" in message and "2 rows" in message


def test_vertical_label_at_wrong_party(tmp_path: Path) -> None:
    b = "id,x2,target\n10,1,0\n11,3,1\n12,5,0\n"
    message = validate_error(tmp_path, VERTICAL, a=VERT_A, b=b)
    assert "b.csv" in message and "'target'" in message and "label_party" in message


def test_vertical_label_party_lacks_label(tmp_path: Path) -> None:
    message = validate_error(tmp_path, VERTICAL, a="id,x1\n10,1\n11,2\n12,3\n", b=VERT_B)
    assert "a.csv" in message and "'target'" in message


def test_vertical_missing_id_column(tmp_path: Path) -> None:
    message = validate_error(tmp_path, VERTICAL, a=VERT_A, b="x2,x3\n1,2\n3,4\n5,6\n")
    assert "b.csv" in message and "'id'" in message


def test_vertical_duplicate_and_fractional_ids(tmp_path: Path) -> None:
    message = validate_error(tmp_path, VERTICAL, a=VERT_A, b="id,x2\n10,1\n10,2\n12,3\n")
    assert "b.csv" in message and "duplicate id" in message and "line 3" in message
    message = validate_error(tmp_path, VERTICAL, a=VERT_A, b="id,x2\n10,1\n11.5,2\n12,3\n")
    assert "b.csv" in message and "'id'" in message and "line 3" in message


def test_vertical_feature_held_twice(tmp_path: Path) -> None:
    message = validate_error(tmp_path, VERTICAL, a=VERT_A, b="id,x1\n10,1\n11,2\n12,3\n")
    assert "b.csv" in message and "'x1'" in message


def test_logistic_label_out_of_range(tmp_path: Path) -> None:
    message = validate_error(tmp_path, b="x1,x2,target\n1,2,0\n1,2,2\n")
    assert "b.csv" in message and "'target'" in message and "line 3" in message


def test_softmax_label_out_of_range(tmp_path: Path) -> None:
    toml = BASE.replace('kind = "logistic"', 'kind = "softmax"\nclasses = 3')
    s = load_scenario(write(tmp_path, toml, a="x1,target\n1,2\n", b="x1,target\n1,3\n"))
    assert load_party_data(s, "a").labels is not None
    with pytest.raises(ConfigError) as exc:
        load_party_data(s, "b")
    check(exc, "b.csv", "'target'", "[0, 3)")
    s = load_scenario(write(tmp_path, toml, b="x1,target\n1,0.5\n"))
    with pytest.raises(ConfigError) as exc:
        load_party_data(s, "b")
    check(exc, "b.csv", "'target'", "integer")


def test_linear_accepts_any_finite_label(tmp_path: Path) -> None:
    toml = BASE.replace('kind = "logistic"', 'kind = "linear"')
    s = load_scenario(write(tmp_path, toml, a="x1,target\n1,-2.5\n", b="x1,target\n1,7.25\n"))
    validate_all(s)
    labels = load_party_data(s, "a").labels
    assert labels is not None and labels.tolist() == [-2.5]


def test_horizontal_id_column_is_not_a_feature(tmp_path: Path) -> None:
    s = load_scenario(write(tmp_path, a="id,x1,x2,target\n7,1,2,0\n"))
    validate_all(s)
    a = load_party_data(s, "a")
    assert a.feature_names == ("x1", "x2") and a.ids is not None and a.ids.tolist() == [7]


def test_unknown_party(tmp_path: Path) -> None:
    s = load_scenario(write(tmp_path))
    with pytest.raises(ConfigError) as exc:
        load_party_data(s, "zed")
    check(exc, "scenario.toml", "'zed'")


def test_evaluation_columns(tmp_path: Path) -> None:
    toml = BASE + '[evaluate]\ndata = "test.csv"\n'
    s = load_scenario(write(tmp_path, toml, test="x2,x1,target\n2,1,1\n"))
    ev = load_evaluation(s)
    assert ev is not None and ev.features.tolist() == [[1.0, 2.0]]  # reordered to feature_order
    message = validate_error(tmp_path, toml, test="x1,target\n1,1\n")
    assert "test.csv" in message and "'x2'" in message
    message = validate_error(tmp_path, toml, test="x1,x2,x9,target\n1,2,3,1\n")
    assert "test.csv" in message and "'x9'" in message


# --------------------------------------------------------------------------- categorical columns

CAT_CSV = "x1,colour,target\n0.5,red,1\n1.5,blue,0\n-0.25,green,1\n"
CATEGORICAL = BASE.replace(
    'label = "target"\n', 'label = "target"\ncategorical = { colour = ["red", "green", "blue"] }\n'
)


def test_categorical_column_is_one_hot_encoded_in_place(tmp_path: Path) -> None:
    s = load_scenario(write(tmp_path, CATEGORICAL, a=CAT_CSV, b=CAT_CSV))
    assert s.data.categories == {"colour": ("red", "green", "blue")}
    data = load_party_data(s, "a")
    assert data.feature_names == ("x1", "colour=red", "colour=green", "colour=blue")
    np.testing.assert_array_equal(data.features, [[0.5, 1, 0, 0], [1.5, 0, 0, 1],
                                                  [-0.25, 0, 1, 0]])
    assert feature_order(s) == list(data.feature_names)
    validate_all(s)


@pytest.mark.parametrize("cell,what", [("purple", "value"), ("", "missing value")])
def test_unknown_category_is_refused_without_its_value(tmp_path: Path, cell: str,
                                                       what: str) -> None:
    bad = CAT_CSV.replace("blue", cell)
    s = load_scenario(write(tmp_path, CATEGORICAL, a=CAT_CSV, b=bad))
    with pytest.raises(ConfigError) as exc:
        load_party_data(s, "b")
    check(exc, "b.csv", "line 3", "column 'colour'", f"{what} is not one of the 3 categories")
    assert "purple" not in str(exc.value)


@pytest.mark.parametrize("table,fragment", [
    ('{ colour = [] }', "non-empty array"),
    ('{ colour = ["red", "red"] }', "twice"),
    ('{ target = ["a"] }', "not data.label"),
    ('["colour"]', "must be a table"),
])
def test_bad_categorical_key(tmp_path: Path, table: str, fragment: str) -> None:
    toml = BASE.replace('label = "target"\n', f'label = "target"\ncategorical = {table}\n')
    with pytest.raises(ConfigError) as exc:
        load_scenario(write(tmp_path, toml))
    check(exc, "data.categorical", fragment)


# --------------------------------------------------------------------------- data preparation


def test_data_preparation_keys(tmp_path: Path) -> None:
    s = load_scenario(write(tmp_path))
    assert s.model.intercept and s.data.standardize and s.data.missing == "error"
    s2 = load_scenario(write(tmp_path), ["model.intercept=false", "data.standardize=false"])
    assert not s2.model.intercept and not s2.data.standardize
    assert scenario_digest(s) != scenario_digest(s2)
    allow = ('[reveal]\nallow = [{ what = "weights", to = "launcher" }, '
             '{ what = "statistics", to = "launcher" }]\n')
    assert load_scenario(write(tmp_path, BASE + allow)).reveal.allows("statistics", "launcher")
    for bad, fragments in [
        ("model.intercept=1", ["'model.intercept'", "boolean"]),
        ("data.standardize='yes'", ["'data.standardize'", "boolean"]),
        ("data.missing='median'", ["'data.missing'", "'error', 'mean'"]),
    ]:
        with pytest.raises(ConfigError) as exc:
            load_scenario(write(tmp_path), [bad])
        check(exc, *fragments)
    with pytest.raises(ConfigError) as exc:
        load_scenario(write(tmp_path), ["data.missing='mean'", "data.standardize=false"])
    check(exc, "'data.missing'", "data.standardize = true")
    with pytest.raises(ConfigError) as exc:
        load_scenario(write(tmp_path, BASE + allow.replace('"statistics", to = "launcher"',
                                                           '"statistics", to = "a"')))
    check(exc, "statistics", "'launcher' or 'all'")
    with pytest.raises(ConfigError) as exc:
        load_scenario(write(tmp_path, BASE + allow), ["data.standardize=false"])
    check(exc, "statistics", "data.standardize = true")


def test_magnitude_bound_names_file_column_and_bound(tmp_path: Path) -> None:
    big = "x1,x2,target\n0.5,-1.0,1\n1.5,300000,0\n"
    message = validate_error(tmp_path, b=big)
    assert all(f in message for f in ("b.csv", "line 3", "'x2'", "2^18 = 262144"))
    assert "300000" not in message
    raw = "x1,x2,target\n0.5,-1.0,1\n1.5,300,0\n"  # fine standardised, too large without
    validate_all(load_scenario(write(tmp_path, b=raw)))
    s = load_scenario(write(tmp_path, b=raw), ["data.standardize=false"])
    with pytest.raises(ConfigError) as exc:
        validate_all(s)
    check(exc, "b.csv", "line 3", "'x2'", "2^8 = 256", "data.standardize = true")


def test_missing_cells_with_mean_imputation(tmp_path: Path) -> None:
    gaps = "x1,x2,target\n0.5,,1\nNA,2.0,0\n-0.25,nan,1\n"
    assert "missing value" in validate_error(tmp_path, a=gaps)  # default data.missing = error
    s = load_scenario(write(tmp_path, a=gaps), ["data.missing='mean'"])
    validate_all(s)
    x = load_party_data(s, "a").features
    assert np.isnan(x).sum() == 3 and x[0, 0] == 0.5
    no_label = "x1,x2,target\n0.5,1,\n"
    s = load_scenario(write(tmp_path, a=no_label), ["data.missing='mean'"])
    with pytest.raises(ConfigError) as exc:
        validate_all(s)
    check(exc, "a.csv", "line 2", "'target'", "labels are never imputed")
    s = load_scenario(write(tmp_path, a="x1,x2,target\n0.5,inf,1\n"), ["data.missing='mean'"])
    with pytest.raises(ConfigError) as exc:
        validate_all(s)
    check(exc, "a.csv", "line 2", "'x2'", "not a finite number")
