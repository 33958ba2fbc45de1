"""The tree-ensemble evaluator: bit-exact with xgboost, and strict about what it will serve."""

import copy
import json
from pathlib import Path

import pytest

from services.estimate.model import ModelLoadError, load_model

ROOT = Path(__file__).parent.parent.parent
ORIGINAL = ROOT / "data/models/original.json"
RECORDED = json.loads((ROOT / "tests/fixtures/original_predictions.json").read_text())


@pytest.fixture(scope="module")
def original():
    return load_model(ORIGINAL)


def test_published_example_is_bit_exact(original):
    assert original.predict(1, 7.748142177252435, 3) == 21.162891387939453


def test_second_published_example_is_bit_exact(original):
    assert original.predict(1, 30.0, 15) == 25.156749725341797


def test_matches_xgboost_on_recorded_random_inputs(original):
    cases = RECORDED["cases"]
    assert len(cases) >= 300
    mismatches = [
        c for c in cases
        if original.predict(c["is_retail"], c["avg_preparation_time"], c["hour_of_day"]) != c["expected"]
    ]
    assert mismatches == []


def test_loads_xgboost_3_artifact_with_vector_base_score(tmp_path):
    doc = json.loads(ORIGINAL.read_text())
    doc["learner"]["learner_model_param"]["base_score"] = "[2.0986887E1]"
    path = tmp_path / "v3.json"
    path.write_text(json.dumps(doc))
    assert load_model(path).predict(1, 7.748142177252435, 3) == 21.162891387939453


def test_version_names_the_artifact_and_its_content(original, tmp_path):
    assert original.version.startswith("original-")
    doc = json.loads(ORIGINAL.read_text())
    doc["learner"]["gradient_booster"]["model"]["trees"][0]["split_conditions"][3] += 1.0
    path = tmp_path / "original.json"
    path.write_text(json.dumps(doc))
    assert load_model(path).version != original.version


def _write(tmp_path, mutate):
    doc = json.loads(ORIGINAL.read_text())
    mutate(doc)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(doc))
    return path


def _set(doc, keys, value):
    target = doc
    for key in keys[:-1]:
        target = target[key]
    target[keys[-1]] = value


@pytest.mark.parametrize(
    ("mutation", "message"),
    [
        (lambda d: _set(d, ["learner", "feature_names"], ["is_retail", "prep", "hour"]), "do not match"),
        (lambda d: _set(d, ["learner", "gradient_booster", "name"], "dart"), "gbtree only"),
        (lambda d: _set(d, ["learner", "objective", "name"], "binary:logistic"), "objective"),
        (lambda d: _set(d, ["learner", "learner_model_param", "base_score"], "abc"), "base_score"),
        (lambda d: _set(d, ["learner", "gradient_booster", "model", "trees"], []), "no trees"),
        (lambda d: d["learner"]["gradient_booster"]["model"]["trees"][5]["left_children"].__setitem__(0, 9999),
         "tree 5"),
        (lambda d: d["learner"]["gradient_booster"]["model"]["trees"][2]["split_indices"].__setitem__(0, 7),
         "feature 7"),
        (lambda d: d["learner"]["gradient_booster"]["model"]["trees"][1]["split_type"].__setitem__(0, 1),
         "categorical"),
    ],
)
def test_refuses_unservable_artifacts_naming_file_and_problem(tmp_path, mutation, message):
    path = _write(tmp_path, mutation)
    with pytest.raises(ModelLoadError) as info:
        load_model(path)
    assert str(path) in str(info.value) and message in str(info.value)


def test_refuses_non_json_and_missing_files(tmp_path):
    garbage = tmp_path / "garbage.json"
    garbage.write_text("{not json")
    with pytest.raises(ModelLoadError, match="garbage.json: not an XGBoost JSON model"):
        load_model(garbage)
    with pytest.raises(ModelLoadError, match="cannot read"):
        load_model(tmp_path / "absent.json")


def test_each_model_has_its_own_cache(original, tmp_path):
    doc = copy.deepcopy(json.loads(ORIGINAL.read_text()))
    doc["learner"]["learner_model_param"]["base_score"] = "3.0E1"
    path = tmp_path / "shifted.json"
    path.write_text(json.dumps(doc))
    shifted = load_model(path)
    first = original.predict(1, 7.748142177252435, 3)
    assert shifted.predict(1, 7.748142177252435, 3) != first
    assert original.predict(1, 7.748142177252435, 3) == first
