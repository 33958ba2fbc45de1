"""Serving an XGBoost JSON tree ensemble without xgboost.

XGBoost evaluates in float32: features are cast to float32, each inner node sends a row left
when ``x[feature] < split_condition`` (both float32), and leaf values are summed onto the base
score in float32, tree by tree.  We do the same, emulating float32 by rounding every
intermediate through ``struct`` (a sum of two float32 values is exact in float64, so rounding
it back to float32 gives exactly the float32 sum).  That makes results bit-identical to
``Booster.predict``, which the tests check against values recorded with xgboost.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

FEATURES: tuple[str, ...] = ("is_retail", "avg_preparation_time", "hour_of_day")

# Objectives whose prediction is the raw margin (identity link); anything else would need a
# transform we do not implement, so such artifacts are refused rather than served wrong.
IDENTITY_OBJECTIVES = frozenset({"reg:squarederror", "reg:absoluteerror", "reg:pseudohubererror", "reg:quantileerror"})

_F32 = struct.Struct("f")


def f32(value: float) -> float:
    """Round a Python float to the nearest float32 (as a Python float)."""
    return _F32.unpack(_F32.pack(value))[0]


class ModelLoadError(Exception):
    """The artifact cannot be served; the message names the file and the problem."""


@dataclass(frozen=True)
class Tree:
    left: tuple[int, ...]
    right: tuple[int, ...]
    feature: tuple[int, ...]
    threshold: tuple[float, ...]  # float32 values; at a leaf, the leaf value
    default_left: tuple[bool, ...]

    def leaf_value(self, row: Sequence[float]) -> float:
        node = 0
        left, right, feature, threshold = self.left, self.right, self.feature, self.threshold
        while left[node] != -1:
            x = row[feature[node]]
            if x != x:  # NaN: missing value follows the node's default direction
                node = left[node] if self.default_left[node] else right[node]
            elif x < threshold[node]:
                node = left[node]
            else:
                node = right[node]
        return threshold[node]


class TreeModel:
    """A loaded, validated artifact.  ``predict`` is memoised: inputs are few (retail x prep x hour)."""

    def __init__(self, trees: list[Tree], base_score: float, version: str, path: str) -> None:
        self.trees = trees
        self.base_score = f32(base_score)
        self.version = version
        self.path = path
        # Per-instance cache: a new model (new artifact) never sees another model's values, and
        # keys hold the preparation time itself, so a changed venue mapping is a different key.
        self.predict = lru_cache(maxsize=65536)(self._predict)

    def _predict(self, is_retail: int, avg_preparation_time: float, hour_of_day: int) -> float:
        row = (f32(float(is_retail)), f32(float(avg_preparation_time)), f32(float(hour_of_day)))
        total = self.base_score
        for tree in self.trees:
            total = f32(total + tree.leaf_value(row))
        return total

    def predict_many(self, rows: Sequence[Sequence[float]]) -> list[float]:
        return [self._predict(int(r[0]), float(r[1]), int(r[2])) for r in rows]


def _parse_base_score(raw: Any, path: str) -> float:
    # XGBoost 2.x writes "2.0986887E1"; 3.x writes "[2.0986887E1]" (a vector, one per target).
    value = raw
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                value = json.loads(text)
            except ValueError as exc:
                raise ModelLoadError(f"{path}: base_score {raw!r} is not a number or list") from exc
        else:
            value = text
    if isinstance(value, list):
        if len(value) != 1:
            raise ModelLoadError(f"{path}: base_score has {len(value)} values; only single-target models are served")
        value = value[0]
    try:
        number = float(value)
    except (TypeError, ValueError) as exc:
        raise ModelLoadError(f"{path}: base_score {raw!r} is not a number") from exc
    if not math.isfinite(number):
        raise ModelLoadError(f"{path}: base_score is not finite")
    return number


def _parse_tree(raw: dict, index: int, num_features: int, path: str) -> Tree:
    where = f"{path}: tree {index}"
    try:
        left = [int(v) for v in raw["left_children"]]
        right = [int(v) for v in raw["right_children"]]
        feature = [int(v) for v in raw["split_indices"]]
        cond = [f32(float(v)) for v in raw["split_conditions"]]
        default_left = [bool(v) for v in raw["default_left"]]
        split_type = [int(v) for v in raw.get("split_type", [0] * len(left))]
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelLoadError(f"{where}: missing or malformed node arrays ({exc})") from exc
    n = len(left)
    if n == 0 or any(len(a) != n for a in (right, feature, cond, default_left, split_type)):
        raise ModelLoadError(f"{where}: node arrays have different lengths")
    if any(split_type):
        raise ModelLoadError(f"{where}: categorical splits are not supported")
    for node in range(n):
        if left[node] == -1:
            if right[node] != -1:
                raise ModelLoadError(f"{where}: node {node} has one child")
            continue
        if not (0 < left[node] < n and 0 < right[node] < n):
            raise ModelLoadError(f"{where}: node {node} points outside the tree")
        if not 0 <= feature[node] < num_features:
            raise ModelLoadError(f"{where}: node {node} splits on feature {feature[node]} of {num_features}")
    return Tree(tuple(left), tuple(right), tuple(feature), tuple(cond), tuple(default_left))


def load_model(path: str | Path, expected_features: Sequence[str] = FEATURES) -> TreeModel:
    """Load and validate an XGBoost 2.x/3.x JSON artifact; raise ModelLoadError saying what is wrong."""
    path = str(path)
    try:
        blob = Path(path).read_bytes()
    except OSError as exc:
        raise ModelLoadError(f"{path}: cannot read the model file ({exc.strerror or exc})") from exc
    try:
        doc = json.loads(blob)
        learner = doc["learner"]
        booster = learner["gradient_booster"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelLoadError(f"{path}: not an XGBoost JSON model ({type(exc).__name__}: {exc})") from exc
    names = learner.get("feature_names") or []
    if list(names) != list(expected_features):
        raise ModelLoadError(
            f"{path}: model features {list(names)} do not match the service's features {list(expected_features)}"
        )
    if booster.get("name") != "gbtree":
        raise ModelLoadError(f"{path}: booster {booster.get('name')!r} is not supported (gbtree only)")
    objective = (learner.get("objective") or {}).get("name")
    if objective not in IDENTITY_OBJECTIVES:
        raise ModelLoadError(f"{path}: objective {objective!r} is not supported; "
                             f"use one of {sorted(IDENTITY_OBJECTIVES)}")
    params = learner.get("learner_model_param") or {}
    if str(params.get("num_class", "0")) not in ("0", "1") or str(params.get("num_target", "1")) != "1":
        raise ModelLoadError(f"{path}: multi-class or multi-target models are not supported")
    base_score = _parse_base_score(params.get("base_score"), path)
    try:
        raw_trees = booster["model"]["trees"]
    except (KeyError, TypeError) as exc:
        raise ModelLoadError(f"{path}: no trees in the model") from exc
    if not raw_trees:
        raise ModelLoadError(f"{path}: the model has no trees")
    trees = [_parse_tree(t, i, len(expected_features), path) for i, t in enumerate(raw_trees)]
    version = f"{Path(path).stem}-{hashlib.sha256(blob).hexdigest()[:12]}"
    return TreeModel(trees, base_score, version, path)
