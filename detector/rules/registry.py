"""The one explicit mapping from a rule's kind (decided by ``detector.config`` from its YAML
keys) to the evaluator class that runs it."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from detector.model import RuleConfig, RuleKind
from detector.rules.anomaly_new import NewKindEvaluator
from detector.rules.anomaly_rate import RateEvaluator
from detector.rules.base import Evaluator
from detector.rules.heartbeat import HeartbeatEvaluator
from detector.rules.match import MatchEvaluator
from detector.rules.pair import PairEvaluator
from detector.rules.systemd_units import SystemdUnitsEvaluator
from detector.rules.threshold import ThresholdEvaluator
from detector.rules.window import WindowEvaluator

EVALUATORS: dict[RuleKind, Callable[[RuleConfig, datetime], Evaluator]] = {
    "error": MatchEvaluator,
    "threshold": ThresholdEvaluator,
    "heartbeat": HeartbeatEvaluator,
    "window": WindowEvaluator,
    "pair": PairEvaluator,
    "anomaly_new": NewKindEvaluator,
    "anomaly_rate": RateEvaluator,
    "systemd_units": SystemdUnitsEvaluator,
}


def build_evaluator(rule: RuleConfig, now: datetime) -> Evaluator:
    try:
        factory = EVALUATORS[rule.kind]
    except KeyError:
        raise ValueError(f"rule {rule.name!r}: kind {rule.kind!r} is not supported") from None
    return factory(rule, now)
