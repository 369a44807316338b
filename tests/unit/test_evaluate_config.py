"""``evaluate.at`` and ``party.test``: schema, default reveal policy, digest, test files."""

from __future__ import annotations

from pathlib import Path

import pytest

from mpc.config.datasets import load_party_data, load_party_test, validate_all
from mpc.config.scenario import RevealRule, load_scenario, scenario_digest
from mpc.core.errors import ConfigError
from mpc.learn.evaluation import MAX_PAIRWISE_ROWS, check_test_rows
from tests.unit.test_scenario import BASE, GOOD_CSV, VERTICAL, check, write

PARTIES = BASE.replace('label = "target"\n', 'label = "target"\nstandardize = false\n').replace(
    'data = "a.csv"\n', 'data = "a.csv"\ntest = "ta.csv"\n').replace(
    'data = "b.csv"\n', 'data = "b.csv"\ntest = "tb.csv"\n') + '[evaluate]\nat = "parties"\n'


def test_default_is_launcher(tmp_path: Path) -> None:
    s = load_scenario(write(tmp_path))
    assert s.evaluate.at == "launcher" and all(p.test is None for p in s.parties)
    assert not s.reveal.allows("metrics", "launcher")


def test_parties_paths_and_default_policy(tmp_path: Path) -> None:
    s = load_scenario(write(tmp_path, PARTIES))
    assert s.evaluate.at == "parties" and s.evaluate.data is None
    assert [p.test for p in s.parties] == [tmp_path / "ta.csv", tmp_path / "tb.csv"]
    assert s.reveal.rules == (RevealRule("weights", "launcher"), RevealRule("metrics", "launcher"))
    assert scenario_digest(s) != scenario_digest(load_scenario(write(tmp_path)))


def test_explicit_reveal_is_kept(tmp_path: Path) -> None:
    """An explicit [reveal] table is the whole policy: metrics only if listed."""
    toml = PARTIES + '[reveal]\nallow = [{ what = "weights", to = "launcher" }]\n'
    assert not load_scenario(write(tmp_path, toml)).reveal.allows("metrics", "launcher")
    toml = PARTIES + '[reveal]\nallow = [{ what = "metrics", to = "all" }]\n'
    assert load_scenario(write(tmp_path, toml)).reveal.allows("metrics", "launcher")


@pytest.mark.parametrize(("toml", "fragments"), [
    (PARTIES.replace('at = "parties"', 'at = "everywhere"'),
     ("'evaluate.at'", "'launcher', 'parties'")),
    (PARTIES.replace('test = "tb.csv"\n', ""), ("'party.1.test'", "required")),
    (PARTIES.replace('at = "parties"', 'at = "launcher"'), ("'party.0.test'", "only allowed")),
    (BASE.replace('data = "b.csv"\n', 'data = "b.csv"\ntest = "tb.csv"\n'),
     ("'party.1.test'", "only allowed")),
    (PARTIES + 'data = "t.csv"\n', ("'evaluate.data'", "not allowed", "party.test")),
])
def test_bad_evaluate_keys(tmp_path: Path, toml: str, fragments: tuple[str, ...]) -> None:
    with pytest.raises(ConfigError) as exc:
        load_scenario(write(tmp_path, toml))
    check(exc, *fragments)


def test_test_files_checked(tmp_path: Path) -> None:
    path = write(tmp_path, PARTIES, ta=GOOD_CSV, tb=GOOD_CSV)
    s = load_scenario(path)
    validate_all(s)
    got = load_party_test(s, "a", load_party_data(s, "a").feature_names)
    assert got.features.shape == (3, 2) and got.labels is not None
    (tmp_path / "tb.csv").write_text("x2,x1,target\n0.5,-1.0,1\n")
    with pytest.raises(ConfigError) as exc:
        validate_all(s)
    check(exc, "tb.csv", "feature columns differ", "b.csv")
    (tmp_path / "tb.csv").unlink()
    with pytest.raises(ConfigError) as exc:
        validate_all(s)
    check(exc, "tb.csv", "cannot read")


def test_linear_test_labels_bounded(tmp_path: Path) -> None:
    toml = PARTIES.replace('kind = "logistic"', 'kind = "linear"')
    path = write(tmp_path, toml, ta=GOOD_CSV, tb="x1,x2,target\n0.5,-1.0,3\n1,2,70.5\n")
    with pytest.raises(ConfigError) as exc:
        validate_all(load_scenario(path))
    check(exc, "tb.csv", "line 3", "'target'", "|y| < 64")


def test_vertical_test_ids_must_agree(tmp_path: Path) -> None:
    unscaled = 'label_party = "a"\nstandardize = false\n'
    toml = VERTICAL.replace('label_party = "a"\n', unscaled).replace(
        'data = "a.csv"\n', 'data = "a.csv"\ntest = "ta.csv"\n').replace(
        'data = "b.csv"\n', 'data = "b.csv"\ntest = "tb.csv"\n') + '[evaluate]\nat = "parties"\n'
    a = "id,x1,target\n1,0.5,1\n2,1.5,0\n"
    b = "id,x2\n1,0.25\n2,-1\n"
    path = write(tmp_path, toml, a=a, b=b, ta=a, tb=b)
    validate_all(load_scenario(path))
    (tmp_path / "tb.csv").write_text("id,x2\n2,0.25\n1,-1\n")
    with pytest.raises(ConfigError) as exc:
        validate_all(load_scenario(path))
    check(exc, "tb.csv", "test ids differ", "same order")


def test_test_row_limits() -> None:
    check_test_rows("logistic", MAX_PAIRWISE_ROWS)
    check_test_rows("linear", 10 * MAX_PAIRWISE_ROWS)
    for kind, rows in (("logistic", MAX_PAIRWISE_ROWS + 1), ("softmax", 0)):
        with pytest.raises(ConfigError, match="evaluate.at = 'parties'"):
            check_test_rows(kind, rows)


def test_parties_with_joint_standardisation_is_accepted(tmp_path: Path) -> None:
    """The test rows are standardised with the training statistics inside MPC."""
    toml = PARTIES.replace("standardize = false\n", "")
    s = load_scenario(write(tmp_path, toml))
    assert s.data.standardize and s.evaluate.at == "parties"
