"""`flask train-model` / `flask evaluate-model` on a small slice of the bundled orders."""

import json

import pytest

from config import DATA_DIR
from services.estimate.model import load_model


@pytest.fixture
def small_orders(tmp_path):
    lines = (DATA_DIR / "orders_data.csv").read_text().splitlines()
    path = tmp_path / "orders.csv"
    path.write_text("\n".join(lines[:601]) + "\n")
    return path


def test_train_writes_a_servable_artifact_and_reports_baselines(runner, small_orders, tmp_path):
    out = tmp_path / "models" / "small.json"
    result = runner.invoke(args=["train-model", "--orders", str(small_orders), "--out", str(out), "--rounds", "30"])
    assert result.exit_code == 0, result.output
    assert "round    30/30" in result.output
    assert "600 usable" in result.output and "120 held out" in result.output
    for name in ("model small-", "baseline: training mean", "baseline: original-"):
        assert name in result.output
    model = load_model(out)
    assert json.loads(out.read_text())["learner"]["feature_names"] == ["is_retail", "avg_preparation_time",
                                                                        "hour_of_day"]
    assert 5.0 < model.predict(1, 10.0, 12) < 60.0


def test_evaluate_prints_mae_and_rmse_next_to_baselines(runner, small_orders):
    result = runner.invoke(args=["evaluate-model", "--model", str(DATA_DIR / "models/original.json"),
                                 "--orders", str(small_orders)])
    assert result.exit_code == 0, result.output
    rows = [line.split() for line in result.output.splitlines() if "baseline" in line or "model original" in line]
    assert len(rows) == 3
    assert all(float(r[-1]) >= float(r[-2]) > 0 for r in rows)  # RMSE >= MAE > 0


def test_bundled_retrained_model_beats_both_baselines(runner):
    result = runner.invoke(args=["evaluate-model", "--model", str(DATA_DIR / "models/retrained.json")])
    assert result.exit_code == 0, result.output
    maes = {}
    for line in result.output.splitlines():
        parts = line.split()
        if len(parts) >= 3 and (line.strip().startswith("model") or line.strip().startswith("baseline")):
            try:
                maes[" ".join(parts[:-2])] = float(parts[-2])
            except ValueError:
                continue
    model_mae = next(v for k, v in maes.items() if k.startswith("model retrained"))
    others = [v for k, v in maes.items() if k.startswith("baseline")]
    assert len(others) == 2 and all(model_mae < other for other in others)


def test_evaluate_refuses_a_bad_artifact(runner, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("[]")
    result = runner.invoke(args=["evaluate-model", "--model", str(bad)])
    assert result.exit_code != 0 and "bad.json" in result.output
