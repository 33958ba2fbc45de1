"""``flask train-model`` and ``flask evaluate-model``: admins' tools for the delivery-time model."""

from __future__ import annotations

import click
from flask.cli import with_appcontext

from config import DATA_DIR
from services.estimate.model import ModelLoadError, load_model
from services.estimate.prep_times import PrepTimesFileError, parse_prep_times_csv
from services.estimate.training import (
    Scores,
    TrainingError,
    TrainParams,
    evaluate,
    load_orders,
    split_orders,
    train,
)

ORIGINAL_MODEL = DATA_DIR / "models" / "original.json"

_orders = click.option("--orders", "orders_path", type=click.Path(dir_okay=False),
                       default=str(DATA_DIR / "orders_data.csv"), show_default=True,
                       help="Historical orders CSV: venue_id,time_received,is_retail,delivery_duration.")
_prep = click.option("--prep-times", "prep_path", type=click.Path(dir_okay=False),
                     default=str(DATA_DIR / "venue_preparation.csv"), show_default=True,
                     help="Venue preparation times CSV used to join orders to their venue.")
_seed = click.option("--seed", type=int, default=42, show_default=True, help="Seed of the held-out split and training.")
_fraction = click.option("--test-fraction", type=float, default=0.2, show_default=True,
                         help="Share of orders held out for evaluation.")
_baseline = click.option("--baseline-model", type=click.Path(dir_okay=False), default=str(ORIGINAL_MODEL),
                         show_default=True, help="Artifact to compare against (the original by default).")


def _print_scores(scores: list[Scores], n_test: int) -> None:
    click.echo(f"held-out evaluation ({n_test} orders):")
    click.echo(f"  {'model':<44} {'MAE':>7} {'RMSE':>7}")
    for s in scores:
        click.echo(f"  {s.name:<44} {s.mae:7.3f} {s.rmse:7.3f}")


def _load_data(orders_path: str, prep_path: str, seed: int, fraction: float):
    try:
        data = load_orders(orders_path, parse_prep_times_csv(prep_path))
        split = split_orders(len(data.labels), seed, fraction)
    except (TrainingError, PrepTimesFileError) as exc:
        raise click.ClickException(str(exc)) from exc
    skipped = ", ".join(f"{k}: {v}" for k, v in data.skipped.items()) or "none"
    click.echo(f"orders: {len(data.labels)} usable (skipped: {skipped}); "
               f"{len(split.train)} train / {len(split.test)} held out (seed {seed})")
    return data, split


def _load_baseline(path: str):
    try:
        return load_model(path)
    except ModelLoadError as exc:
        raise click.ClickException(str(exc)) from exc


@click.command("train-model", help="Train a delivery-time model on correctly joined orders and write an "
                                   "XGBoost JSON artifact the service can load.")
@_orders
@_prep
@click.option("--out", "out_path", type=click.Path(dir_okay=False), required=True,
              help="Where to write the artifact, e.g. data/models/retrained.json.")
@_seed
@_fraction
@click.option("--rounds", type=click.IntRange(1, 5000), default=200, show_default=True, help="Boosting rounds.")
@click.option("--max-depth", type=click.IntRange(1, 12), default=3, show_default=True, help="Depth of each tree.")
@click.option("--learning-rate", type=click.FloatRange(0.001, 1.0), default=0.05, show_default=True,
              help="Shrinkage per round.")
@_baseline
@with_appcontext
def train_model(orders_path, prep_path, out_path, seed, test_fraction, rounds, max_depth, learning_rate,
                baseline_model) -> None:
    data, split = _load_data(orders_path, prep_path, seed, test_fraction)
    params = TrainParams(rounds=rounds, max_depth=max_depth, learning_rate=learning_rate, seed=seed,
                         test_fraction=test_fraction)
    step = max(1, rounds // 10)

    def progress(done: int, total: int, rmse: float) -> None:
        if done % step == 0 or done == total:
            click.echo(f"  round {done:>5}/{total}  train RMSE {rmse:.4f}")

    click.echo(f"training: {rounds} rounds, depth {max_depth}, learning rate {learning_rate}")
    try:
        model = train(data, split, out_path, params, progress)
    except (TrainingError, ModelLoadError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"wrote {out_path} (model version {model.version})")
    _print_scores(evaluate(model, data, split, _load_baseline(baseline_model)), len(split.test))


@click.command("evaluate-model", help="Print held-out MAE and RMSE of a model next to the training-mean "
                                      "and original-artifact baselines.")
@click.option("--model", "model_path", type=click.Path(dir_okay=False), required=True,
              help="XGBoost JSON artifact to evaluate.")
@_orders
@_prep
@_seed
@_fraction
@_baseline
@with_appcontext
def evaluate_model(model_path, orders_path, prep_path, seed, test_fraction, baseline_model) -> None:
    try:
        model = load_model(model_path)
    except ModelLoadError as exc:
        raise click.ClickException(str(exc)) from exc
    data, split = _load_data(orders_path, prep_path, seed, test_fraction)
    _print_scores(evaluate(model, data, split, _load_baseline(baseline_model)), len(split.test))
