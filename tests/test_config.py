"""rules.yaml loading: the DESIGN.md example, every error class, ${VAR} and durations."""

from __future__ import annotations

import re
import textwrap
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detector.config import (
    ConfigError,
    format_duration,
    load_config,
    parse_config,
    parse_duration,
)
from detector.model import (
    AnomalyNewSpec,
    AnomalyRateSpec,
    FileSourceConfig,
    HeartbeatSpec,
    JournaldSourceConfig,
    PairSpec,
    ThresholdSpec,
    WindowSpec,
)

CONFIGS = Path(__file__).parent / "configs"
DESIGN_ENV = {
    "DETECTOR_HEARTBEAT_URL": "https://hc.example.com/ping/abc",
    "SLACK_WEBHOOK_URL": "https://hooks.slack.com/services/T/B/X",
    "PAGERDUTY_ROUTING_KEY": "R0UT1NGR0UT1NGR0UT1NGR0UT1NGR0UT",  # 32 characters, as PagerDuty's
    "DETECTOR_HMAC_SECRET": "s3cret",
    "TOKEN": "tok",
}

HEAD = """\
version: 1
sources:
  app: {file: /var/log/app.log}
  journal: {journald: {units: [backup.service]}}
webhooks:
  ops: {url: "https://hooks.example.com/ops"}
  pager: {url: "https://events.example.com/v2", format: pagerduty, routing_key: rk}
defaults: {owner: team-a, runbook: "https://wiki.example.com/rb"}
rules:
"""


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Messages name the file as given; loading ``rules.yaml`` from the CWD keeps them short."""
    monkeypatch.chdir(tmp_path)


def write(text: str) -> str:
    Path("rules.yaml").write_text(text, encoding="utf-8")
    return text


def with_rules(rules: str) -> str:
    return write(HEAD + textwrap.indent(textwrap.dedent(rules), "  "))


def line_of(text: str, needle: str, nth: int = 1) -> int:
    """1-based line of the nth line containing ``needle``."""
    hits = [i for i, line in enumerate(text.splitlines(), start=1) if needle in line]
    return hits[nth - 1]


def errors(env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config("rules.yaml", env or {})
    return info.value.errors


def one_error(env: dict[str, str] | None = None) -> str:
    errs = errors(env)
    assert len(errs) == 1, errs
    return errs[0]


# ---------------------------------------------------------------- the DESIGN.md example


def test_design_example_loads_into_the_expected_dataclasses() -> None:
    config = load_config(CONFIGS / "design.yaml", DESIGN_ENV)

    assert config.agent.host == "db1"
    assert config.agent.state == Path("/var/lib/detector/state.db")
    assert config.agent.listen == "127.0.0.1:9465"
    assert config.agent.heartbeat == "https://hc.example.com/ping/abc"
    assert config.defaults.notify == ("ops",)
    assert config.defaults.repeat == timedelta(hours=4)
    assert config.defaults.owner == "platform-team"

    syslog, nginx = config.sources["syslog"], config.sources["nginx"]
    assert isinstance(syslog, FileSourceConfig) and syslog.paths == ("/var/log/syslog",)
    assert isinstance(nginx, FileSourceConfig) and nginx.paths == ("/var/log/nginx/*.log",)
    assert config.sources["backups"] == JournaldSourceConfig(
        name="backups", units=("backup.service",), location=config.sources["backups"].location
    )
    kernel = config.sources["kernel"]
    assert isinstance(kernel, JournaldSourceConfig)
    assert kernel.match == {"_TRANSPORT": ("kernel",)} and kernel.priority == 4

    assert config.webhooks["ops"].url == "https://hooks.slack.com/services/T/B/X"
    assert config.webhooks["ops"].format == "slack"
    assert config.webhooks["pager"].routing_key == "R0UT1NGR0UT1NGR0UT1NGR0UT1NGR0UT"
    assert config.webhooks["hook"].secret == "s3cret"
    assert config.webhooks["hook"].headers == {"Authorization": "Bearer tok"}

    rules = {r.name: r for r in config.rules}
    assert [r.kind for r in config.rules] == [
        "error",
        "threshold",
        "heartbeat",
        "window",
        "pair",
        "anomaly_rate",
        "anomaly_new",
    ]
    timeout = rules["nginx-upstream-timeout"]
    assert timeout.severity == "critical" and timeout.sources == ("nginx",)
    assert timeout.summary == "nginx upstream {upstream} timing out"
    assert timeout.notify == ("ops",) and timeout.owner == "platform-team"
    assert rules["ssh-bruteforce"].threshold == ThresholdSpec(10, timedelta(minutes=5), ("ip",))
    assert rules["app-alive"].heartbeat == HeartbeatSpec(
        every=timedelta(minutes=5), grace=timedelta(minutes=1)
    )
    backup = rules["nightly-backup"]
    assert backup.window == WindowSpec("0 2 * * *", timedelta(hours=1), "Europe/Berlin")
    assert backup.fail == "backup failed|ERROR" and backup.owner == "dba-team"
    etl = rules["etl-finishes"]
    assert etl.match is None
    assert etl.pair == PairSpec(
        start=r"etl (?P<job>\w+) started",
        end=r"etl (?P<job>\w+) finished",
        within=timedelta(minutes=30),
    )
    assert rules["syslog-rate"].anomaly_rate == AnomalyRateSpec()
    assert rules["syslog-rate"].match is None
    assert rules["new-errors"].anomaly_new == AnomalyNewSpec()
    assert rules["new-errors"].match == "(?i)error|fail"
    # Only the backup rule has a runbook: the others are warned about, not refused.
    assert len(config.warnings) == 6
    assert all("no runbook" in w for w in config.warnings)


def test_every_error_of_the_design_example_without_env_is_reported_at_once() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(CONFIGS / "design.yaml", {})
    names = ["DETECTOR_HEARTBEAT_URL", "SLACK_WEBHOOK_URL", "PAGERDUTY_ROUTING_KEY"]
    names += ["DETECTOR_HMAC_SECRET", "TOKEN"]
    assert len(info.value.errors) == 5
    for name, err in zip(names, info.value.errors, strict=True):
        assert name in err and "is not set" in err
    assert str(info.value) == "\n".join(info.value.errors)


# ---------------------------------------------------------------- syntax, types, keys


def test_yaml_syntax_error_gives_line_column_and_a_hint() -> None:
    text = write("version: 1\nrules:\n  - name: a\n    match: 'unclosed\n  - name: b\n")
    err = one_error()
    assert err.startswith("rules.yaml:")
    assert "YAML syntax error" in err and "quot" in err
    line = int(err.split(":")[1])
    assert line >= line_of(text, "unclosed")


def test_tab_indentation_is_explained() -> None:
    write("version: 1\nrules:\n\t- name: a\n")
    err = one_error()
    assert err.startswith("rules.yaml:3:1: YAML syntax error") and "not tabs" in err


def test_unknown_key_points_at_it_and_suggests_the_right_one() -> None:
    text = with_rules("""\
        - name: nginx-5xx
          source: app
          match: 'HTTP 5\\d\\d'
          tresholds: {count: 3, within: 1m}
        """)
    line = line_of(text, "tresholds")
    assert one_error() == (
        f"rules.yaml:{line}:5: rule 'nginx-5xx': unknown key 'tresholds' — "
        "did you mean 'threshold'?"
    )


def test_unknown_keys_are_reported_in_every_section() -> None:
    text = write(
        HEAD.replace("defaults: {", "defaults: {sevrity: info, ")
        .replace("app: {file:", "app: {start: end, file:")
        .replace("format: pagerduty", "fromat: pagerduty, format: pagerduty")
        + "agent: {hots: x}\nrulez: []\n"
    )
    errs = errors()
    assert len(errs) == 5, errs
    assert f"rules.yaml:{line_of(text, 'start: end')}:" in errs[0]
    assert "source 'app': unknown key 'start' — did you mean 'start_at'?" in errs[0]
    assert "webhook 'pager': unknown key 'fromat' — did you mean 'format'?" in errs[1]
    assert "defaults: unknown key 'sevrity' — did you mean 'severity'?" in errs[2]
    assert "agent: unknown key 'hots' — did you mean 'host'?" in errs[3]
    assert "unknown top-level key 'rulez' — did you mean 'rules'?" in errs[4]


def test_wrong_type_says_what_was_expected_and_what_was_written() -> None:
    text = with_rules("""\
        - name: disk
          source: app
          match: 'No space left'
          notify: 3
        """)
    assert one_error() == (
        f"rules.yaml:{line_of(text, 'notify: 3')}:13: rule 'disk': notify: expected a list of "
        "webhook names, got a number (3)"
    )


def test_wrong_type_for_a_number_field() -> None:
    text = with_rules("""\
        - name: burst
          source: app
          match: x
          threshold: {count: many, within: 1m}
        """)
    err = one_error()
    assert err.startswith(f"rules.yaml:{line_of(text, 'count: many')}:")
    assert "rule 'burst': threshold.count: expected a whole number, got a string ('many')" in err


def test_missing_required_keys_are_named_with_what_to_add() -> None:
    text = with_rules("""\
        - name: no-source
          match: x
        - source: app
          match: y
        - name: short-threshold
          source: app
          match: z
          threshold: {within: 5m}
        """)
    errs = errors()
    assert len(errs) == 3, errs
    assert errs[0].startswith(f"rules.yaml:{line_of(text, 'name: no-source')}:")
    assert "rule 'no-source': missing required key 'source' — add source: <name>" in errs[0]
    assert "rule #2: missing required key 'name' — add name:" in errs[1]
    assert (
        "rule 'short-threshold': threshold: missing required key 'count' — add count:" in (errs[2])
    )


def test_duplicate_keys_in_a_mapping_are_an_error() -> None:
    text = with_rules("""\
        - name: twice
          source: app
          match: a
          match: b
        """)
    err = one_error()
    assert err.startswith(f"rules.yaml:{line_of(text, 'match: b')}:5: rule 'twice': ")
    assert f"duplicate key 'match' (first at line {line_of(text, 'match: a')})" in err


# ---------------------------------------------------------------- references


def test_unknown_source_suggests_a_defined_one() -> None:
    text = with_rules("""\
        - name: typo
          source: ap
          match: x
        """)
    assert one_error() == (
        f"rules.yaml:{line_of(text, 'source: ap')}:13: rule 'typo': source: unknown source "
        "'ap' — did you mean 'app'?"
    )


def test_unknown_webhook_without_a_close_name_lists_the_defined_ones() -> None:
    text = with_rules("""\
        - name: route
          source: [app, journal]
          match: x
          notify: [ops, zzz]
        """)
    assert one_error() == (
        f"rules.yaml:{line_of(text, 'notify:')}:13: rule 'route': notify: unknown webhook "
        "'zzz' — defined webhooks: ops, pager"
    )


def test_duplicate_rule_name_points_at_the_second_and_names_the_first() -> None:
    text = with_rules("""\
        - name: same
          source: app
          match: a
        - name: same
          source: app
          match: b
        """)
    err = one_error()
    assert err.startswith(f"rules.yaml:{line_of(text, 'name: same', 2)}:")
    assert "rule 'same': duplicate rule name" in err
    assert f"(first defined at line {line_of(text, 'name: same')})" in err and "rename" in err


def test_agent_fallback_and_webhook_fallback_must_name_webhooks() -> None:
    text = write(
        HEAD.replace("format: pagerduty, routing_key: rk}", "routing_key: rk, fallback: opps}")
        + "agent: {fallback: [pagr]}\n"
    )
    errs = errors()
    assert len(errs) == 2, errs
    assert f":{line_of(text, 'fallback: opps')}:" in errs[0]
    assert "webhook 'pager': fallback: unknown webhook 'opps' — did you mean 'ops'?" in errs[0]
    assert "agent: fallback: unknown webhook 'pagr' — did you mean 'pager'?" in errs[1]


# ---------------------------------------------------------------- values


@pytest.mark.parametrize(
    ("written", "hint"),
    [
        ("5", "'5' has no unit — write 30s or 5m"),
        ("5 minutes", "cannot read '5 minutes' as a duration — write e.g. 30s, 5m"),
        ("30m1h", "units must go from largest to smallest"),
        ("0s", "must be longer than 0s"),
    ],
)
def test_bad_durations_say_how_to_write_one(written: str, hint: str) -> None:
    text = with_rules(f"""\
        - name: slow
          source: app
          match: x
          expect: {{every: {written}}}
        """)
    err = one_error()
    assert err.startswith(f"rules.yaml:{line_of(text, 'expect:')}:")
    assert "rule 'slow': expect.every: " in err and hint in err


def test_repeat_never_disables_repeats_and_defaults_apply_otherwise() -> None:
    with_rules("""\
        - name: once
          source: app
          match: x
          repeat: never
        - name: default
          source: app
          match: y
        """)
    once, default = load_config("rules.yaml", {}).rules
    assert once.repeat is None
    assert default.repeat == timedelta(hours=4)


def test_invalid_regex_shows_the_message_and_a_caret_at_the_position() -> None:
    text = with_rules("""\
        - name: broken
          source: app
          match: 'upstream (timed out'
        """)
    line = line_of(text, "upstream (")
    # the '(' is at column 20 of the file: 4 spaces + "match: '" + "upstream "
    column = text.splitlines()[line - 1].index("(") + 1
    err = one_error()
    assert err.startswith(f"rules.yaml:{line}:{column}: rule 'broken': match: ")
    assert "invalid regular expression: missing ), unterminated subpattern at position 9" in err
    assert err.endswith("\n    upstream (timed out\n             ^")


def test_invalid_regex_in_ignore_and_masks_is_caught_too() -> None:
    with_rules("""\
        - name: masks
          source: app
          match: a
          ignore: '[z'
          anomaly: {type: new, masks: [{regex: '*x', replace: X}]}
        """)
    errs = errors()
    assert len(errs) == 2, errs
    assert "rule 'masks': ignore: invalid regular expression" in errs[0]
    assert (
        "rule 'masks': anomaly.masks.regex: invalid regular expression: nothing to repeat"
        in (errs[1])
    )


def test_bad_cron_and_bad_timezone_are_errors_with_examples() -> None:
    text = with_rules("""\
        - name: backup
          source: journal
          match: done
          expect: {cron: "61 2 * * *", within: 1h}
        - name: report
          source: journal
          match: done
          expect: {cron: "0 6 * * *", within: 1h, timezone: Europe/Berln}
        - name: six-fields
          source: journal
          match: done
          expect: {cron: "0 0 6 * * *", within: 1h}
        """)
    errs = errors()
    assert len(errs) == 3, errs
    assert errs[0].startswith(f"rules.yaml:{line_of(text, '61 2')}:")
    assert "rule 'backup': expect.cron: invalid cron expression '61 2 * * *'" in errs[0]
    assert "e.g. '30 2 * * mon-fri'" in errs[0]
    assert errs[1].startswith(f"rules.yaml:{line_of(text, 'Berln')}:")
    assert "rule 'report': expect.timezone: unknown time zone 'Europe/Berln'" in errs[1]
    assert "did you mean 'Europe/Berlin'?" in errs[1]
    assert "rule 'six-fields': expect.cron: '0 0 6 * * *' has 6 fields, expected 5" in errs[2]


def test_between_sugar_becomes_cron_and_within() -> None:
    with_rules("""\
        - name: nightly
          source: journal
          match: done
          expect: {between: "02:00-03:30", days: [mon, Friday], timezone: Europe/Berlin}
        - name: across-midnight
          source: journal
          match: done
          expect: {between: "23:15-01:00"}
        - name: hourly
          source: journal
          match: done
          expect: {cron: "@hourly", within: 10m}
        """)
    nightly, midnight, hourly = load_config("rules.yaml", {}).rules
    assert nightly.kind == "window"
    assert nightly.window == WindowSpec(
        "0 2 * * 1,5", timedelta(hours=1, minutes=30), "Europe/Berlin"
    )
    assert midnight.window == WindowSpec("15 23 * * *", timedelta(hours=1, minutes=45))
    assert hourly.window == WindowSpec("0 * * * *", timedelta(minutes=10))


def test_bad_between_and_bad_day_are_errors() -> None:
    with_rules("""\
        - name: a
          source: journal
          match: done
          expect: {between: "2am-3am"}
        - name: b
          source: journal
          match: done
          expect: {between: "02:00-03:00", days: [mon, tues]}
        """)
    errs = errors()
    assert len(errs) == 2, errs
    assert (
        "rule 'a': expect.between: '2am-3am' is not HH:MM-HH:MM — write e.g. '02:00-03:30'"
        in (errs[0])
    )
    assert "rule 'b': expect.days: 'tues' is not a day — did you mean 'tue'?" in errs[1]


# ---------------------------------------------------------------- ${VAR}


def test_env_interpolation_with_default_escape_and_regex_anchors() -> None:
    with_rules("""\
        - name: env
          source: app
          match: 'price \\$$${CURRENCY:-USD} at end$'
          summary: "${PREFIX}: {line}"
          owner: "${OWNER:-nobody}"
          labels: {team: "${TEAM:-core}"}
          threshold: {count: "${COUNT}", within: 1m}
        """)
    (rule,) = load_config(
        "rules.yaml", {"PREFIX": "disk", "OWNER": "", "TEAM": "db", "COUNT": "7"}
    ).rules
    assert rule.match == r"price \$USD at end$"
    assert rule.summary == "disk: {line}"
    assert rule.owner == "nobody"  # set-but-empty takes the :- default
    assert rule.labels == {"team": "db"}
    assert rule.threshold is not None and rule.threshold.count == 7


def test_missing_env_var_without_default_names_the_variable_and_the_line() -> None:
    text = with_rules("""\
        - name: env
          source: app
          match: x
          runbook: "https://wiki/${WIKI_PAGE}"
        """)
    assert one_error() == (
        f"rules.yaml:{line_of(text, 'WIKI_PAGE')}:14: rule 'env': runbook: environment variable "
        "WIKI_PAGE is not set — set it in the environment, or give a default: "
        "${WIKI_PAGE:-value}"
    )


def test_env_defaults_to_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DETECTOR_TEST_OWNER", "from-os")
    with_rules("""\
        - name: env
          source: app
          match: x
          owner: ${DETECTOR_TEST_OWNER}
        """)
    assert load_config("rules.yaml").rules[0].owner == "from-os"


def test_malformed_reference_is_an_error() -> None:
    with_rules("""\
        - name: env
          source: app
          match: x
          owner: "${not a name}"
        """)
    err = one_error()
    assert "rule 'env': owner: '${not a name}' is not a valid variable reference" in err
    assert "$$ for a literal dollar" in err


# ---------------------------------------------------------------- templates, by, samples


def test_summary_field_not_captured_lists_the_available_names() -> None:
    text = with_rules("""\
        - name: tmpl
          source: app
          match: 'upstream (?P<upstream>\\S+) from (?P<client>\\S+)'
          summary: "{upstreem} timing out for {client} on {host}"
        """)
    assert one_error() == (
        f"rules.yaml:{line_of(text, 'summary')}:14: rule 'tmpl': summary: '{{upstreem}}' is not "
        "a captured group or a built-in field — did you mean 'upstream'? available: client, "
        "count, host, line, rule, source, upstream; or capture it with (?P<upstreem>…) in the "
        "pattern"
    )


def test_journald_rules_may_use_any_field_in_templates() -> None:
    with_rules("""\
        - name: unit-failed
          source: journal
          match: 'failed'
          summary: "{_SYSTEMD_UNIT} failed on {host}"
          description: "pid {_PID}"
        """)
    (rule,) = load_config("rules.yaml", {}).rules
    assert rule.summary == "{_SYSTEMD_UNIT} failed on {host}"


def test_malformed_template_is_an_error() -> None:
    with_rules("""\
        - name: tmpl
          source: app
          match: x
          description: "unclosed {brace"
        """)
    err = one_error()
    assert "rule 'tmpl': description: malformed template" in err and "{{" in err


def test_by_naming_an_uncaptured_group_is_an_error() -> None:
    text = with_rules("""\
        - name: brute
          source: app
          match: 'Failed password from (?P<ip>\\S+)'
          threshold: {count: 5, within: 1m, by: [ip, usr]}
        - name: rate
          source: app
          anomaly: {type: rate, by: host_name}
        - name: grouped
          source: app
          match: 'Failed password from (?P<ip>\\S+)'
          group_by: ipp
        """)
    errs = errors()
    assert len(errs) == 3, errs
    assert errs[0].startswith(f"rules.yaml:{line_of(text, 'usr')}:")
    assert "rule 'brute': threshold.by: 'usr' is not captured by the rule's pattern " in errs[0]
    assert "(captured groups: ip) — add (?P<usr>…) to the pattern" in errs[0]
    assert "rule 'rate': anomaly.by: 'host_name' is not captured" in errs[1]
    assert "the pattern captures nothing" in errs[1]
    assert "rule 'grouped': group_by: 'ipp' is not captured" in errs[2]
    assert "did you mean 'ip'?" in errs[2]


def test_group_by_and_by_on_captured_groups_load() -> None:
    with_rules("""\
        - name: brute
          source: app
          match: 'Failed password for (?P<user>\\S+) from (?P<ip>\\S+)'
          group_by: [user]
          threshold: {count: 5, within: 1m, by: ip}
        - name: per-host
          source: app
          match: 'alive (?P<host_name>\\S+)'
          expect: {every: 1m, by: host_name, keys: [web1, web2]}
        """)
    brute, per_host = load_config("rules.yaml", {}).rules
    assert brute.group_by == ("user",)
    assert brute.threshold == ThresholdSpec(5, timedelta(minutes=1), ("ip",))
    assert per_host.heartbeat == HeartbeatSpec(
        every=timedelta(minutes=1), by="host_name", keys=("web1", "web2")
    )


def test_samples_that_do_not_match_are_errors_and_matching_ones_load() -> None:
    text = with_rules("""\
        - name: sampled
          source: app
          match: 'disk (?P<dev>sd\\w) full'
          ignore: 'sdz'
          samples:
            - "kernel: disk sda full"
            - "kernel: disk is fine"
            - "kernel: disk sdz full"
        """)
    errs = errors()
    assert len(errs) == 2, errs
    assert errs[0].startswith(f"rules.yaml:{line_of(text, 'disk is fine')}:")
    assert "rule 'sampled': samples: sample does not match the rule's match pattern" in errs[0]
    assert "fix the pattern or the sample" in errs[0]
    assert "sample is excluded by the rule's ignore pattern" in errs[1]

    text = with_rules("""\
        - name: sampled
          source: app
          match: 'disk (?P<dev>sd\\w) full'
          samples: ["kernel: disk sda full"]
        """)
    assert load_config("rules.yaml", {}).rules[0].samples == ("kernel: disk sda full",)


# ---------------------------------------------------------------- kinds


def test_conflicting_kinds_are_an_error_at_the_second_key() -> None:
    text = with_rules("""\
        - name: both
          source: app
          match: x
          threshold: {count: 2, within: 1m}
          expect: {every: 5m}
        """)
    assert one_error() == (
        f"rules.yaml:{line_of(text, 'expect:')}:5: rule 'both': 'expect' cannot be combined "
        f"with 'threshold' (line {line_of(text, 'threshold:')}) — a rule has exactly one kind; "
        "split it into two rules"
    )


def test_pair_rules_need_start_end_within_and_no_match() -> None:
    with_rules("""\
        - name: half
          source: app
          start: 'job started'
        - name: matchy
          source: app
          match: x
          start: a
          end: b
          within: 5m
        - name: stray
          source: app
          match: x
          within: 5m
        """)
    errs = errors()
    assert len(errs) == 4, errs
    assert "rule 'half': pair rule is missing 'end' — add end: 'pattern'" in errs[0]
    assert "rule 'half': pair rule is missing 'within' — add within: 30m" in errs[1]
    assert "rule 'matchy': pair rules use start: and end: instead of match:" in errs[2]
    assert "rule 'stray': 'within' belongs to pair rules" in errs[3]
    assert "inside threshold: {…} or expect: {…}" in errs[3]


def test_pair_options_load() -> None:
    with_rules("""\
        - name: etl
          source: app
          start: 'etl (?P<job>\\w+) started'
          end: 'etl (?P<job>\\w+) finished'
          within: 30m
          min_duration: 1m
          on_orphan_end: alert
          on_double_start: ignore
          summary: "etl {job} late"
        """)
    (rule,) = load_config("rules.yaml", {}).rules
    assert rule.pair == PairSpec(
        r"etl (?P<job>\w+) started",
        r"etl (?P<job>\w+) finished",
        timedelta(minutes=30),
        timedelta(minutes=1),
        "alert",
        "ignore",
    )


def test_fail_is_only_for_window_rules_and_rules_need_something_to_detect() -> None:
    with_rules("""\
        - name: failing
          source: app
          match: ok
          fail: bad
          expect: {every: 5m}
        - name: empty
          source: app
          severity: info
        - name: what
          source: app
          anomaly: weird
        """)
    errs = errors()
    assert len(errs) == 3, errs
    assert "rule 'failing': fail: applies to window rules only" in errs[0]
    assert "rule 'empty': nothing to detect — add match:" in errs[1]
    assert "rule 'what': anomaly: 'weird' is not an anomaly type — write anomaly: new" in errs[2]


def test_anomaly_mappings_load_with_their_options() -> None:
    with_rules("""\
        - name: new-lines
          source: app
          anomaly: {type: new, learn_lines: 1000, max_alerts_per_hour: 3, similarity: 0.7,
                    masks: [{regex: 'req-\\d+', replace: '<REQ>'}]}
        - name: rate
          source: app
          match: 'GET (?P<path>\\S+)'
          anomaly: {type: rate, bucket: 5m, sensitivity: 3.5, for: 3, min_delta: 0, learn: 2h,
                    by: path, direction: up}
        """)
    new, rate = load_config("rules.yaml", {}).rules
    assert new.kind == "anomaly_new" and new.match is None
    assert new.anomaly_new == AnomalyNewSpec(
        learn=None,
        learn_lines=1000,
        max_alerts_per_hour=3,
        masks=((r"req-\d+", "<REQ>"),),
        similarity=0.7,
    )
    assert rate.anomaly_rate == AnomalyRateSpec(
        bucket=timedelta(minutes=5),
        sensitivity=3.5,
        for_buckets=3,
        min_delta=0,
        learn=timedelta(hours=2),
        by="path",
        direction="up",
    )


def test_bad_choices_suggest_the_allowed_value() -> None:
    with_rules("""\
        - name: sev
          source: app
          match: x
          severity: critcal
        - name: dir
          source: app
          anomaly: {type: rate, direction: sideways}
        """)
    errs = errors()
    assert len(errs) == 2, errs
    assert "rule 'sev': severity: 'critcal' is not allowed — did you mean 'critical'?" in errs[0]
    assert (
        "rule 'dir': anomaly.direction: 'sideways' is not allowed — use one of: both, up, "
        in (errs[1])
    )


# ---------------------------------------------------------------- defaults, notify, warnings


def test_defaults_fill_unset_fields_and_labels_merge() -> None:
    write("""\
version: 1
defaults: {severity: error, repeat: 1h, resolve_after: 5m, labels: {team: db, env: prod}}
sources: {app: {file: /var/log/app.log}}
webhooks:
  zeta: {url: "https://z.example.com/"}
  alpha: {url: "https://a.example.com/"}
rules:
  - name: plain
    source: app
    match: x
    labels: {env: staging}
  - name: routed
    source: app
    match: y
    severity: info
    notify: zeta
""")
    config = load_config("rules.yaml", {})
    plain, routed = config.rules
    assert plain.severity == "error" and plain.repeat == timedelta(hours=1)
    assert plain.resolve_after == timedelta(minutes=5)
    assert plain.labels == {"team": "db", "env": "staging"}
    assert plain.notify == ("alpha", "zeta")  # unset everywhere: every webhook, sorted
    assert routed.severity == "info" and routed.notify == ("zeta",)
    assert len(config.warnings) == 2
    assert config.warnings[0] == (
        "rules.yaml:8:5: rule 'plain': no owner or runbook — add owner: (who to call) and "
        "runbook: (what to do), here or under defaults:"
    )


def test_missing_version_is_a_warning_and_a_wrong_version_an_error() -> None:
    write(HEAD.replace("version: 1\n", "") + "  - {name: a, source: app, match: x}\n")
    config = load_config("rules.yaml", {})
    assert config.warnings == (
        "rules.yaml:1:1: no 'version:' — add 'version: 1' at the top of the file",
    )

    write(HEAD.replace("version: 1", "version: 2") + "  - {name: a, source: app, match: x}\n")
    assert one_error() == (
        "rules.yaml:1:10: version: unsupported version a number (2) — this detector reads "
        "'version: 1'"
    )


def test_agent_defaults_follow_state_directory() -> None:
    write(HEAD + "  - {name: a, source: app, match: x}\n")
    agent = load_config("rules.yaml", {"STATE_DIRECTORY": "/var/lib/detector"}).agent
    assert agent.state == Path("/var/lib/detector/state.db")
    assert agent.host  # the hostname
    assert load_config("rules.yaml", {}).agent.state == Path("detector-state.db")


def test_agent_settings_are_validated() -> None:
    write(
        HEAD
        + "  - {name: a, source: app, match: x}\n"
        + "agent: {listen: localhost, heartbeat: 'ftp://x/y', log_format: jsn,"
        + " source_grace: 2m, heartbeat_every: 30s}\n"
    )
    errs = errors()
    assert len(errs) == 3, errs
    assert "agent: listen: 'localhost' is not host:port — write e.g. 127.0.0.1:9465" in errs[0]
    assert "agent: heartbeat: expected an http:// or https:// URL, got ftp://x…" in errs[1]
    assert "agent: log_format: 'jsn' is not allowed — did you mean 'json'?" in errs[2]


# ---------------------------------------------------------------- sources and webhooks


def test_source_problems_are_reported_per_source() -> None:
    text = write("""\
version: 1
sources:
  both: {file: /a, journald: {units: [x]}}
  prio: {journald: {priority: loud, match: {_systemd_unit: x.service}}}
  num: {journald: {priority: 9}}
  sized: {file: [/a, /b], max_line_bytes: 0, start_at: start}
rules: []
""")
    errs = errors()
    assert len(errs) == 6, errs
    assert errs[0].startswith(f"rules.yaml:{line_of(text, 'both:')}:")
    assert "source 'both': needs exactly one of file: (path or glob) or journald:" in errs[0]
    assert "source 'prio': journald.priority: unknown priority 'loud'" in errs[1]
    assert "'_systemd_unit' is not a journald field name" in errs[2] and "_SYSTEMD_UNIT" in errs[2]
    assert "source 'num': journald.priority: must be between 0 and 7, got 9" in errs[3]
    assert "source 'sized': max_line_bytes: must be ≥ 1, got 0" in errs[4]
    assert (
        "source 'sized': start_at: 'start' is not allowed — use one of: end, beginning" in (errs[5])
    )


def test_journald_source_options_load() -> None:
    write("""\
version: 1
sources:
  j: {journald: {units: a.service, identifiers: [sshd, sudo], priority: err,
                 match: {_TRANSPORT: [kernel, syslog]}, namespace: ns, start_at: beginning}}
  f: {file: [/var/log/a.log, "/var/log/b/*.log"], start_at: beginning, poll_interval: 500ms}
rules: []
""")
    config = load_config("rules.yaml", {})
    j, f = config.sources["j"], config.sources["f"]
    assert isinstance(j, JournaldSourceConfig)
    assert (j.units, j.identifiers, j.priority) == (("a.service",), ("sshd", "sudo"), 3)
    assert j.match == {"_TRANSPORT": ("kernel", "syslog")}
    assert (j.namespace, j.start_at) == ("ns", "beginning")
    assert isinstance(f, FileSourceConfig)
    assert f.paths == ("/var/log/a.log", "/var/log/b/*.log")
    assert f.poll_interval == timedelta(milliseconds=500) and f.start_at == "beginning"


def test_webhook_problems_are_reported_per_webhook() -> None:
    text = write("""\
version: 1
webhooks:
  nourl: {format: json}
  badurl: {url: "hooks.example.com/x"}
  fmt: {url: "https://a.example.com", format: slak}
  pd: {url: "https://events.pagerduty.com/v2/enqueue", format: pagerduty}
  ok: {url: "https://b.example.com", format: ntfy, topic: alerts, rate: 10, fail_after: 5,
       timeout: 3s, headers: {X-Env: prod}}
""")
    errs = errors()
    assert len(errs) == 4, errs
    assert errs[0].startswith(f"rules.yaml:{line_of(text, 'nourl')}:")
    assert "webhook 'nourl': missing required key 'url' — add url: https://" in errs[0]
    assert "webhook 'badurl': url: expected an http:// or https:// URL" in errs[1]
    assert "webhook 'fmt': format: 'slak' is not allowed — did you mean 'slack'?" in errs[2]
    assert "webhook 'pd': format pagerduty needs routing_key" in errs[3]


def test_a_valid_webhook_loads_with_its_options() -> None:
    write("""\
version: 1
webhooks:
  ok: {url: "https://b.example.com", format: ntfy, topic: alerts, rate: 10, fail_after: 5,
       timeout: 3s, max_age: 2d, headers: {X-Env: prod}}
""")
    hook = load_config("rules.yaml", {}).webhooks["ok"]
    assert (hook.format, hook.topic, hook.rate, hook.fail_after) == ("ntfy", "alerts", 10, 5)
    assert hook.timeout == timedelta(seconds=3) and hook.max_age == timedelta(days=2)
    assert hook.headers == {"X-Env": "prod"}


# ---------------------------------------------------------------- whole-file behaviour


def test_all_errors_are_collected_in_file_order() -> None:
    text = with_rules("""\
        - name: one
          source: nope
          match: x
        - name: two
          source: app
          match: '('
        - name: three
          source: app
          match: x
          expect: {every: 5}
        """)
    errs = errors()
    assert [int(e.split(":")[1]) for e in errs] == [
        line_of(text, "source: nope"),
        line_of(text, "match: '('"),
        line_of(text, "every: 5"),
    ]


def test_unreadable_and_empty_files_are_config_errors() -> None:
    with pytest.raises(ConfigError) as info:
        load_config("missing.yaml", {})
    assert info.value.errors[0].startswith("missing.yaml: cannot read: ")
    write("")
    assert one_error() == (
        "rules.yaml:1:1: the file is empty — start with 'version: 1' and a rules: list"
    )


def test_yaml_anchors_merges_and_x_keys_are_supported() -> None:
    write("""\
version: 1
x-base: &base {owner: me, runbook: "https://wiki/x"}
x-common: &common {<<: *base, source: app, expect: &every {every: 5m}}
sources: {app: {file: /a}}
rules:
  - <<: *common
    name: a
    match: x
  - <<: *common
    name: b
    match: y
    owner: you
  - {<<: *common, name: c, match: z, expect: *every}
""")
    a, b, c = load_config("rules.yaml", {}).rules
    assert (a.sources, a.owner, b.owner, c.owner) == (("app",), "me", "you", "me")
    assert a.heartbeat == b.heartbeat == c.heartbeat == HeartbeatSpec(timedelta(minutes=5))


def test_empty_name_lists_are_errors() -> None:
    with_rules("""\
        - name: nowhere
          source: []
          match: x
          notify: []
        """)
    errs = errors()
    assert len(errs) == 2, errs
    assert "rule 'nowhere': source: empty list — name at least one source" in errs[0]
    assert "rule 'nowhere': notify: empty list — name at least one webhook" in errs[1]


_JUNK = ["[", "]", "{", "}", ":", "- ", "null", "3", "true", "~", "&a ", "*a", "!foo ", '"', "'"]
_JUNK += ["\n", "  ", "(", "${X}", "$$", "[1, 2]", "{a: b}", "\t", "never", "<<: *a"]


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(st.floats(0, 1), st.sampled_from(_JUNK), st.integers(0, 8)),
        min_size=1,
        max_size=4,
    )
)
def test_a_mangled_file_gives_config_errors_never_a_crash(
    edits: list[tuple[float, str, int]],
) -> None:
    text = (CONFIGS / "design.yaml").read_text()
    for where, junk, cut in edits:
        pos = int(where * len(text))
        text = text[:pos] + junk + text[pos + cut :]
    try:
        parse_config(text, "rules.yaml", DESIGN_ENV)
    except ConfigError as e:
        assert e.errors
        assert all(m.startswith("rules.yaml:") for m in e.errors), e.errors


# ---------------------------------------------------------------- durations


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30s", timedelta(seconds=30)),
        ("5m", timedelta(minutes=5)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("2d", timedelta(days=2)),
        ("1w", timedelta(weeks=1)),
        ("500ms", timedelta(milliseconds=500)),
        ("1.5h", timedelta(minutes=90)),
        ("1h 5s", timedelta(hours=1, seconds=5)),
        ("0s", timedelta(0)),
    ],
)
def test_parse_duration_accepts_the_documented_forms(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("30", "write 30s or 5m"),
        ("", "empty duration"),
        ("-5m", "negative"),
        ("5x", "cannot read '5x'"),
        ("5m5m", "largest to smallest, each once"),
    ],
)
def test_parse_duration_refuses_with_a_hint(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_duration(text)


@given(
    st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=3650)).map(
        lambda d: d - timedelta(microseconds=d.microseconds % 1000)
    )
)
def test_formatted_durations_parse_back_to_the_same_value(d: timedelta) -> None:
    assert parse_duration(format_duration(d)) == d


@given(st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=365)))
def test_durations_with_microseconds_round_trip_too(d: timedelta) -> None:
    assert parse_duration(format_duration(d)) == d


def test_a_pattern_python_warns_about_is_a_warning_naming_the_line_not_a_crash() -> None:
    write(HEAD + "  - {name: a, source: app, match: '[[a]x'}\n")
    config = load_config("rules.yaml", {})
    [warning] = [w for w in config.warnings if "nested set" in w]
    assert "rule 'a'" in warning and "rules.yaml:" in warning and "\\[" in warning


def test_a_webhook_template_with_an_unknown_placeholder_names_the_line_and_the_known_ones() -> None:
    Path("rules.yaml").write_text(
        "version: 1\nsources: {app: {file: /x.log}}\n"
        "webhooks:\n  h: {url: 'http://127.0.0.1:9/x', template: '{\"t\": \"$sumary\"}'}\n"
        "rules:\n  - {name: a, source: app, match: x}\n"
    )
    with pytest.raises(ConfigError) as e:
        load_config("rules.yaml", {})
    assert "rules.yaml:4:" in str(e.value) and "webhook 'h'" in str(e.value)
    assert "$sumary" in str(e.value) and "summary" in str(e.value)


_NON_ASCII = """\
version: 1
# é ü — a comment that is not ASCII
sources:
  app: {file: /var/log/app.log}
rules:
  - name: café
    source: app
    match: 'Fehler: (?P<was>\\w+) – ß [[]x'
    description: "🙂 ünïcode"
"""


@pytest.mark.parametrize(
    "text",
    [
        (Path(__file__).parents[1] / "rules.yaml").read_text(),
        (Path(__file__).parent / "configs" / "design.yaml").read_text(),
        "\ufeff" + _NON_ASCII.replace("\n", "\r\n"),
    ],
    ids=["rules.yaml", "design.yaml", "non-ascii"],
)
def test_libyaml_and_pure_python_yaml_read_the_same_config_and_warnings(
    text: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from detector.config import load

    assert load._FAST_LOADER is not None  # the wheel has libyaml: the fast path is tested
    fast = parse_config(text, "rules.yaml", DESIGN_ENV)
    monkeypatch.setattr(load, "_FAST_LOADER", None)
    re.purge()  # a warning is said when re compiles a pattern, not from re's cache
    pure = parse_config(text, "rules.yaml", DESIGN_ENV)
    assert fast == pure
    assert fast.warnings == pure.warnings
    if "[[]" in text:
        assert any("café" in w and ":8:" in w for w in fast.warnings), fast.warnings
