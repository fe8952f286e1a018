"""``detector check`` against each webhook's format: the URL shape, ntfy topic and PagerDuty key
that its service accepts (errors for what can never work there, warnings for unusual hosts), and
runbooks that are meant as links but are not absolute http(s) URLs."""

from __future__ import annotations

from pathlib import Path

import pytest

from detector.config import load_config
from detector.config.nodes import ConfigError

KEY = "0123456789abcdef0123456789ABCDEF"


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


def config_with(webhooks: str, runbook: str = "https://wiki.example.com/rb") -> str:
    text = (
        "version: 1\nsources:\n  app: {file: /var/log/app.log}\nwebhooks:\n"
        + webhooks
        + f'defaults: {{owner: team-a, runbook: "{runbook}"}}\n'
        + "rules:\n  - {name: a, source: app, match: x}\n"
    )
    Path("rules.yaml").write_text(text, encoding="utf-8")
    return text


def line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), start=1) if needle in line)


def errors() -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config("rules.yaml", {})
    return info.value.errors


def warnings() -> tuple[str, ...]:
    return load_config("rules.yaml", {}).warnings


def test_well_formed_webhooks_of_every_format_load_without_findings() -> None:
    config_with(
        "  s: {url: 'https://hooks.slack.com/services/T0/B0/xyz', format: slack}\n"
        "  d: {url: 'https://discord.com/api/webhooks/123/tok-en_1', format: discord}\n"
        "  t: {url: 'https://prod-1.westeurope.logic.azure.com/workflows/a/triggers/manual/paths/"
        "invoke?sig=x', format: teams}\n"
        "  n: {url: 'https://ntfy.sh/ops-alerts', format: ntfy}\n"
        f"  p: {{url: 'https://events.pagerduty.com/v2/enqueue', format: pagerduty, "
        f"routing_key: {KEY}}}\n"
        "  local: {url: 'http://127.0.0.1:8080/relay', format: slack}\n"
    )
    assert warnings() == ()


def test_an_ntfy_url_without_a_topic_is_an_error_with_file_line_and_fix() -> None:
    text = config_with("  n: {url: 'https://ntfy.sh/', format: ntfy}\n")
    (err,) = errors()
    assert err.startswith(f"rules.yaml:{line_of(text, 'ntfy.sh')}:")
    assert "format ntfy needs a topic" in err and "topic: ops-alerts" in err
    config_with("  n: {url: 'https://ntfy.sh/', format: ntfy, topic: 'no spaces'}\n")
    (err,) = errors()
    assert "is not an ntfy topic" in err


def test_a_pagerduty_key_of_the_wrong_shape_is_an_error_on_pagerduty_only() -> None:
    text = config_with(
        "  p: {url: 'https://events.pagerduty.com/v2/enqueue', format: pagerduty, "
        "routing_key: short}\n"
    )
    (err,) = errors()
    assert err.startswith(f"rules.yaml:{line_of(text, 'routing_key')}:")
    assert "32 letters and digits, this one has 5 characters" in err
    # a relay in front of PagerDuty may take its own keys
    config_with("  p: {url: 'https://pd-relay.example.com/x', format: pagerduty, routing_key: k}\n")
    assert warnings() == ()


def test_service_hosts_with_an_impossible_path_are_errors_other_hosts_warnings() -> None:
    config_with(
        "  s: {url: 'https://hooks.slack.com/foo', format: slack}\n"
        "  d: {url: 'https://discord.com/channels/1/2', format: discord}\n"
    )
    errs = errors()
    assert len(errs) == 2, errs
    assert "hooks.slack.com/services/" in errs[0]
    assert "discord.com/api/webhooks/<id>/<token>" in errs[1]
    config_with(
        "  s: {url: 'https://chat-relay.example.com/slack', format: slack}\n"
        "  t: {url: 'https://contoso.webhook.office.com/webhookb2/x', format: teams}\n"
    )
    found = warnings()
    assert len(found) == 2, found
    assert "not hooks.slack.com — fine for a relay" in found[0]
    assert "Office 365 connector URL" in found[1]


def test_a_runbook_meant_as_a_link_but_not_a_url_is_warned_about() -> None:
    text = config_with("  j: {url: 'https://hooks.example.com/x'}\n", runbook="wiki/backup")
    (warning,) = warnings()
    assert warning.startswith(f"rules.yaml:{line_of(text, 'wiki/backup')}:")
    assert "'wiki/backup' is not an absolute http(s) URL" in warning
    config_with("  j: {url: 'https://hooks.example.com/x'}\n", runbook="ask the db team")
    assert warnings() == ()  # free text: shown as text, nothing to warn about
