"""The one explicit mapping from a rule's kind (decided by ``detector.config`` from its YAML
keys) to the evaluator class that runs it."""

from __future__ import annotations

import importlib
from datetime import datetime
from typing import TYPE_CHECKING

from detector.model import RuleConfig, RuleKind

if TYPE_CHECKING:
    from detector.rules.base import Evaluator

EVALUATORS: dict[RuleKind, tuple[str, str]] = {
    "error": ("detector.rules.match", "MatchEvaluator"),
    "threshold": ("detector.rules.threshold", "ThresholdEvaluator"),
    "heartbeat": ("detector.rules.heartbeat", "HeartbeatEvaluator"),
    "window": ("detector.rules.window", "WindowEvaluator"),
    "pair": ("detector.rules.pair", "PairEvaluator"),
    "anomaly_new": ("detector.rules.anomaly_new", "NewKindEvaluator"),
    "anomaly_rate": ("detector.rules.anomaly_rate", "RateEvaluator"),
    "systemd_units": ("detector.rules.systemd_units", "SystemdUnitsEvaluator"),
}
"""Module and class per kind, imported on first use: a command only pays for the kinds its
rules use (``detector test`` on a few match rules starts faster)."""


def build_evaluator(rule: RuleConfig, now: datetime) -> Evaluator:
    try:
        module, name = EVALUATORS[rule.kind]
    except KeyError:
        raise ValueError(f"rule {rule.name!r}: kind {rule.kind!r} is not supported") from None
    factory = getattr(importlib.import_module(module), name)
    evaluator: Evaluator = factory(rule, now)
    return evaluator
