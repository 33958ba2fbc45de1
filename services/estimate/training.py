"""Training and evaluating delivery-time models on historical orders.

The original training script joined orders to venues in a way that misaligned features and
labels; here each order is joined to its own venue's preparation time by ``venue_id``.  The
held-out split is a seeded shuffle, so `train-model` and `evaluate-model` given the same seed
and fraction evaluate on exactly the same orders.  xgboost is needed only for training (the
``train`` extra); evaluation uses the serving code's own tree walk, so it scores exactly what
the service would answer.
"""

from __future__ import annotations

import csv
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from services.estimate.model import FEATURES, TreeModel, load_model


class TrainingError(Exception):
    """Training or evaluation cannot run; the message says why."""


@dataclass
class OrderDataset:
    rows: list[tuple[int, float, int]]
    labels: list[float]
    skipped: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Split:
    train: list[int]
    test: list[int]


@dataclass(frozen=True)
class Scores:
    name: str
    mae: float
    rmse: float


@dataclass(frozen=True)
class TrainParams:
    rounds: int = 200
    max_depth: int = 3
    learning_rate: float = 0.05
    seed: int = 42
    test_fraction: float = 0.2


def load_orders(orders_csv: str | Path, prep_times: dict[str, float]) -> OrderDataset:
    """Orders joined to their own venue's preparation time; unusable rows are counted by reason."""
    data = OrderDataset(rows=[], labels=[])
    try:
        handle = open(orders_csv, newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise TrainingError(f"{orders_csv}: cannot open ({exc.strerror or exc})") from exc
    with handle:
        reader = csv.DictReader(handle)
        needed = {"venue_id", "time_received", "is_retail", "delivery_duration"}
        if not needed <= set(reader.fieldnames or []):
            raise TrainingError(f"{orders_csv}: header must contain {sorted(needed)}, got {reader.fieldnames}")
        for row in reader:
            prep = prep_times.get((row["venue_id"] or "").strip())
            if prep is None:
                data.skipped["unknown venue"] = data.skipped.get("unknown venue", 0) + 1
                continue
            try:
                hour = datetime.fromisoformat(row["time_received"].strip()).hour
                retail = int(float(row["is_retail"]))
                label = float(row["delivery_duration"])
            except (ValueError, AttributeError):
                data.skipped["unparseable"] = data.skipped.get("unparseable", 0) + 1
                continue
            if retail not in (0, 1) or not math.isfinite(label):
                data.skipped["out of range"] = data.skipped.get("out of range", 0) + 1
                continue
            data.rows.append((retail, prep, hour))
            data.labels.append(label)
    if len(data.labels) < 10:
        raise TrainingError(f"{orders_csv}: only {len(data.labels)} usable orders; need at least 10")
    return data


def split_orders(n: int, seed: int, test_fraction: float) -> Split:
    if not 0.0 < test_fraction < 1.0:
        raise TrainingError(f"test fraction must be between 0 and 1, got {test_fraction}")
    order = list(range(n))
    random.Random(seed).shuffle(order)
    cut = n - max(1, int(round(n * test_fraction)))
    return Split(train=sorted(order[:cut]), test=sorted(order[cut:]))


def score(name: str, predictions: list[float], labels: list[float]) -> Scores:
    errors = [p - y for p, y in zip(predictions, labels)]
    return Scores(name, sum(abs(e) for e in errors) / len(errors), math.sqrt(sum(e * e for e in errors) / len(errors)))


def evaluate(
    model: TreeModel, data: OrderDataset, split: Split, baseline_model: TreeModel | None = None
) -> list[Scores]:
    """Held-out MAE/RMSE of ``model`` next to the training-mean baseline and ``baseline_model``."""
    test_rows = [data.rows[i] for i in split.test]
    test_labels = [data.labels[i] for i in split.test]
    train_mean = sum(data.labels[i] for i in split.train) / len(split.train)
    results = [score(f"model {model.version}", model.predict_many(test_rows), test_labels),
               score("baseline: training mean", [train_mean] * len(test_labels), test_labels)]
    if baseline_model is not None:
        results.append(score(f"baseline: {baseline_model.version}", baseline_model.predict_many(test_rows),
                             test_labels))
    return results


def train(
    data: OrderDataset,
    split: Split,
    out_path: str | Path,
    params: TrainParams,
    progress: Callable[[int, int, float], None] | None = None,
) -> TreeModel:
    """Fit gradient-boosted trees on the training part, write an XGBoost JSON artifact, load it back."""
    try:
        import numpy as np
        import xgboost as xgb
    except ImportError as exc:
        raise TrainingError("training needs xgboost: pip install -e '.[train]'") from exc

    x = np.array([data.rows[i] for i in split.train], dtype=np.float32)
    y = np.array([data.labels[i] for i in split.train], dtype=np.float32)
    dtrain = xgb.DMatrix(x, label=y, feature_names=list(FEATURES))

    class _Progress(xgb.callback.TrainingCallback):
        def after_iteration(self, model, epoch, evals_log):
            if progress is not None:
                history = evals_log.get("train", {}).get("rmse", [float("nan")])
                progress(epoch + 1, params.rounds, float(history[-1]))
            return False

    booster = xgb.train(
        {"objective": "reg:squarederror", "max_depth": params.max_depth, "eta": params.learning_rate,
         "seed": params.seed, "nthread": 1, "eval_metric": "rmse"},
        dtrain,
        num_boost_round=params.rounds,
        evals=[(dtrain, "train")],
        verbose_eval=False,
        callbacks=[_Progress()],
    )
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    booster.save_model(str(out))
    return load_model(out)
