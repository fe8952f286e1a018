"""Docs held complete by tests: every command and rule kind is in the README, and every rule of
the bundled rules.yaml has sample lines that really match it."""

from __future__ import annotations

import re
import typing
from pathlib import Path

import pytest

from detector.cli import COMMANDS
from detector.config import load_config
from detector.matching import Matcher
from detector.model import RuleKind
from detector.pipeline import pattern_specs

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
ENV = {"DETECTOR_LOG_DIR": "/var/log/demo"}

KIND_WORDS = {
    "error": "| error |",
    "threshold": "| threshold |",
    "heartbeat": "| heartbeat |",
    "window": "| window |",
    "pair": "| pair |",
    "anomaly_new": "anomaly (new)",
    "anomaly_rate": "anomaly (rate)",
    "systemd_units": "| systemd units |",
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_cli_command_is_documented_with_an_example(command: str) -> None:
    assert f"`detector {command}" in README
    assert re.search(rf"^\$ detector {command}\b", README, re.M)


def test_every_rule_kind_is_documented() -> None:
    kinds = typing.get_args(RuleKind)
    assert set(kinds) == set(KIND_WORDS)
    for kind in kinds:
        assert KIND_WORDS[kind] in README, kind


def test_every_bundled_rule_has_samples_that_match_it() -> None:
    config = load_config(ROOT / "rules.yaml", ENV)
    assert config.rules
    matcher = Matcher(pattern_specs(config.rules))
    for rule in config.rules:
        assert rule.samples, f"rule {rule.name} in rules.yaml has no samples:"
        for source in rule.sources:
            hits = matcher.match(source, list(rule.samples))
            matched = {h.line for h in hits if h.rule == rule.name and h.role in ("match", "start")}
            assert matched == set(range(len(rule.samples))), (rule.name, rule.samples)
