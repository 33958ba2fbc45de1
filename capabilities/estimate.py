"""The delivery-time estimate's state: the model and the venues' preparation times."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import PurePath

from flask import Flask, current_app

from capabilities.runtime import runtime
from services.estimate.model import TreeModel
from services.estimate.prep_times import PrepTimeCache

EXTENSION = "courier.estimate"


@dataclass(frozen=True)
class EstimateCapability:
    """What the estimate endpoints use: the model (None when it failed to load: /readyz says why)
    and the venues' preparation times (reloaded when their data version changes)."""

    model: TreeModel | None
    prep_times: PrepTimeCache


def estimate_capability() -> EstimateCapability:
    return current_app.extensions[EXTENSION]


def init_app(app: Flask) -> EstimateCapability:
    """Load the model (a failure makes /readyz 503, not the process die) and the prep-time cache."""
    from services.estimate.model import ModelLoadError, load_model
    from services.metrics import metrics

    built = runtime(app)
    model, problem = None, None
    path = str(app.config["MODEL_PATH"])
    try:
        model = load_model(path)
    except ModelLoadError as exc:
        logging.getLogger("courier.estimate").error("model not loaded", extra={"problem": str(exc)})
        # /readyz answers anyone with ops:read: the file's name, not where it lives on the server.
        problem = str(exc).replace(path, PurePath(path).name)
    if model is not None:
        metrics().model_info.labels(model.version).set(1)
    prep_times = PrepTimeCache(built.session_factory, app.config["PREP_TIMES_RELOAD_S"])
    built.warmers["prep_times"] = prep_times.get
    built.readiness_checks["model"] = lambda: problem
    capability = app.extensions[EXTENSION] = EstimateCapability(model=model, prep_times=prep_times)
    return capability
