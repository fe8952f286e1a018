"""rules.yaml in several files: ``include:`` globs and paths, errors at each file's own
line:column, names shared across files, ``detector check`` listing the files, and the running
agent reloading when an included file changes, appears or goes. Real files in tmp dirs; the
in-process agent runs on a FakeClock, its file watch on real time."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from detector.clock import FakeClock
from detector.config import ConfigError, load_config
from detector.config.watch import Snapshot, config_changes, snapshot
from tests.agent_inproc import rule_alerts, running, until
from tests.agent_proc import write_config
from tests.receiver import Receiver

ROOT = Path(__file__).resolve().parents[1]
T0 = datetime(2026, 6, 9, 12, 0, tzinfo=UTC)

MAIN = """\
version: 1
include: [rules.d/*.yaml]
sources:
  app: {file: /var/log/app.log}
webhooks:
  ops: {url: "http://127.0.0.1:9/alerts"}
rules:
  - name: main-rule
    source: web          # declared in an included file
    match: 'boom'
"""

WEB = """\
sources:
  web: {file: /var/log/web.log}
rules:
  - name: web-rule
    source: app          # declared in the main file
    match: 'oops'
    notify: ops
"""


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def errors_of(path: Path, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        load_config(path, env or {})
    return exc.value.errors


# ---------------------------------------------------------------- what is read


def test_a_glob_reads_its_files_in_sorted_order_with_references_across_files(
    tmp_path: Path,
) -> None:
    main = write(tmp_path / "etc" / "rules.yaml", MAIN)
    write(tmp_path / "etc" / "rules.d" / "20-web.yaml", WEB)
    write(
        tmp_path / "etc" / "rules.d" / "10-db.yaml",
        """\
        rules:
          - name: db-rule
            source: [app, web]
            match: 'deadlock'
        """,
    )
    write(tmp_path / "etc" / "rules.d" / "notes.txt", "not yaml: [")  # not matched
    config = load_config(main, {})
    d = tmp_path / "etc" / "rules.d"
    assert config.files == (str(main), str(d / "10-db.yaml"), str(d / "20-web.yaml"))
    assert [r.name for r in config.rules] == ["main-rule", "db-rule", "web-rule"]
    assert list(config.sources) == ["app", "web"]
    assert config.rules[2].notify == ("ops",)
    [inc] = config.includes
    assert inc.pattern == "rules.d/*.yaml"
    assert inc.glob == str(tmp_path / "etc" / "rules.d" / "*.yaml")
    assert inc.files == config.files[1:]
    web_rule = config.rules[2]
    assert web_rule.location is not None
    assert (web_rule.location.file, web_rule.location.line) == (str(d / "20-web.yaml"), 4)
    assert config.sources["web"].location is not None
    assert config.sources["web"].location.file == str(d / "20-web.yaml")


def test_relative_paths_are_relative_to_the_including_file_not_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    main = write(
        tmp_path / "conf" / "rules.yaml",
        MAIN.replace("[rules.d/*.yaml]", "[extra/web.yaml, /nonexistent-dir/*.yaml]"),
    )
    write(tmp_path / "conf" / "extra" / "web.yaml", WEB)
    monkeypatch.chdir(tmp_path)  # elsewhere: conf/extra/web.yaml is not ./extra/web.yaml
    config = load_config("conf/rules.yaml", {})
    assert config.files == ("conf/rules.yaml", "conf/extra/web.yaml")
    assert [i.files for i in config.includes] == [("conf/extra/web.yaml",), ()]
    assert main.exists()


def test_a_glob_matching_nothing_is_fine_and_an_empty_included_file_adds_nothing(
    tmp_path: Path,
) -> None:
    main = write(tmp_path / "rules.yaml", MAIN.replace("source: web", "source: app"))
    config = load_config(main, {})  # rules.d/ does not exist yet (discover writes it later)
    assert config.files == (str(main),)
    assert config.includes[0].files == ()
    write(tmp_path / "rules.d" / "discovered.yaml", "# nothing discovered yet\n")
    config = load_config(main, {})
    assert config.files == (str(main), str(tmp_path / "rules.d" / "discovered.yaml"))
    assert [r.name for r in config.rules] == ["main-rule"]


def test_a_file_matched_twice_and_the_main_file_matched_by_a_glob_are_read_once(
    tmp_path: Path,
) -> None:
    main = write(tmp_path / "rules.yaml", MAIN.replace("[rules.d/*.yaml]", "['*.yaml', web.yaml]"))
    write(tmp_path / "web.yaml", WEB)
    config = load_config(main, {})
    assert config.files == (str(main), str(tmp_path / "web.yaml"))
    assert [i.files for i in config.includes] == [(str(tmp_path / "web.yaml"),), ()]
    assert [r.name for r in config.rules] == ["main-rule", "web-rule"]


def test_variables_are_expanded_in_included_files_and_in_include_patterns(
    tmp_path: Path,
) -> None:
    main = write(tmp_path / "rules.yaml", MAIN.replace("[rules.d/*.yaml]", "['${RULES_D}/*.yaml']"))
    write(
        tmp_path / "more" / "web.yaml",
        WEB.replace("/var/log/web.log", "'${LOG_DIR:-/var/log}/web.log'"),
    )
    config = load_config(main, {"RULES_D": "more", "LOG_DIR": "/srv/logs"})
    assert config.sources["web"].paths == ("/srv/logs/web.log",)  # type: ignore[union-attr]
    assert config.includes[0].pattern == "more/*.yaml"


def test_the_bundled_rules_yaml_loads_a_discovered_yaml_beside_it(tmp_path: Path) -> None:
    env = {"DETECTOR_LOG_DIR": "/var/log/demo"}
    bundled = tmp_path / "rules.yaml"
    bundled.write_text((ROOT / "rules.yaml").read_text())
    alone = load_config(bundled, env)
    assert [i.pattern for i in alone.includes] == ["rules.d/*.yaml"]
    assert alone.files == (str(bundled),)
    found = write(
        tmp_path / "rules.d" / "discovered.yaml",
        """\
        rules:
          - name: discovered-oom
            source: app
            match: 'Out of memory: Killed process (?P<pid>\\d+)'
        """,
    )
    config = load_config(bundled, env)
    assert config.files == (str(bundled), str(found))
    assert [r.name for r in config.rules] == [*(r.name for r in alone.rules), "discovered-oom"]
    assert config.rules[-1].owner == alone.defaults.owner  # the main file's defaults apply


# ---------------------------------------------------------------- errors, each at its place


def test_an_error_in_an_included_file_names_that_file_line_and_column(tmp_path: Path) -> None:
    main = write(tmp_path / "rules.yaml", MAIN)
    inc = write(tmp_path / "rules.d" / "web.yaml", WEB.replace("match: 'oops'", "mach: 'oops'"))
    errs = errors_of(main)
    assert f"{inc}:6:5: rule 'web-rule': unknown key 'mach' — did you mean 'match'?" in errs
    assert all(e.startswith(f"{inc}:") for e in errs)


def test_errors_of_several_files_come_sorted_by_file_then_position(tmp_path: Path) -> None:
    main = write(tmp_path / "rules.yaml", MAIN.replace("match: 'boom'", "match: 'boom'\n    x: 1"))
    a = write(
        tmp_path / "rules.d" / "a.yaml", "rules:\n  - name: a\n    source: nope\n    match: x\n"
    )
    b = write(tmp_path / "rules.d" / "b.yaml", WEB.replace("source: app", "source: ap"))
    errs = errors_of(main)
    assert [e.split(":")[0] for e in errs] == [str(main), str(a), str(b)]
    assert errs[0].startswith(f"{main}:11:5: rule 'main-rule': unknown key 'x'")
    assert errs[1].startswith(f"{a}:3:13: rule 'a': source: unknown source 'nope'")
    assert (
        errs[2] == f"{b}:5:13: rule 'web-rule': source: unknown source 'ap' — did you mean 'app'?"
    )


def test_a_yaml_syntax_error_in_an_included_file_names_that_file(tmp_path: Path) -> None:
    main = write(tmp_path / "rules.yaml", MAIN)
    inc = write(tmp_path / "rules.d" / "web.yaml", "rules:\n  - name: [\n")
    [err] = errors_of(main)
    assert err.startswith(f"{inc}:3:1: YAML syntax error")


def test_a_bad_regex_in_an_included_file_gets_its_own_column(tmp_path: Path) -> None:
    main = write(tmp_path / "rules.yaml", MAIN)
    inc = write(tmp_path / "rules.d" / "web.yaml", WEB.replace("'oops'", "'oo(ps'"))
    [err] = errors_of(main)
    assert err.startswith(f"{inc}:6:15: rule 'web-rule': match: invalid regular expression")


def test_agent_defaults_version_and_nested_include_are_only_for_the_main_file(
    tmp_path: Path,
) -> None:
    main = write(tmp_path / "rules.yaml", MAIN)
    inc = write(
        tmp_path / "rules.d" / "web.yaml",
        "version: 1\nagent: {host: x}\ndefaults: {severity: error}\ninclude: [more/*.yaml]\n"
        + WEB
        + "rulez: []\n",
    )
    errs = errors_of(main)
    assert errs == [
        f"{inc}:1:1: 'version:' is only read from the main file ({main}) — move it there; an "
        "included file holds sources:, webhooks: and rules:",
        f"{inc}:2:1: 'agent:' is only read from the main file ({main}) — move it there; an "
        "included file holds sources:, webhooks: and rules:",
        f"{inc}:3:1: 'defaults:' is only read from the main file ({main}) — move it there; an "
        "included file holds sources:, webhooks: and rules:",
        f"{inc}:4:1: 'include:' is only read from the main file ({main}), not from an included "
        "one — list this pattern in the include: of the main file",
        f"{inc}:12:1: unknown top-level key 'rulez' — did you mean 'rules'?",
    ]


def test_a_missing_literal_path_or_a_directory_is_an_error_at_the_include_line(
    tmp_path: Path,
) -> None:
    main = write(
        tmp_path / "rules.yaml",
        MAIN.replace("[rules.d/*.yaml]", "\n  - missing.yaml\n  - rules.d\n  - 3").replace(
            "source: web", "source: app"
        ),
    )
    (tmp_path / "rules.d").mkdir()
    errs = errors_of(main)
    assert errs == [
        f"{main}:3:5: include: 'missing.yaml' does not exist ({tmp_path}/missing.yaml) — fix "
        "the path, or write a glob (e.g. rules.d/*.yaml), which may match no file",
        f"{main}:4:5: include: 'rules.d' is a directory — include its files with a glob, e.g. "
        "rules.d/*.yaml",
        f"{main}:5:5: include: expected a path or glob such as rules.d/*.yaml, got a number (3)",
    ]


def test_an_unreadable_included_file_is_an_error_at_the_include_line(tmp_path: Path) -> None:
    main = write(tmp_path / "rules.yaml", MAIN)
    inc = tmp_path / "rules.d" / "latin1.yaml"
    inc.parent.mkdir()
    inc.write_bytes(b"# caf\xe9\nrules: []\n")
    [err] = errors_of(main)
    assert err == (
        f"{main}:2:11: include 'rules.d/*.yaml': {inc}: not valid UTF-8 at byte 5 — save the "
        "file as UTF-8"
    )


@pytest.mark.parametrize(
    ("section", "main_body", "included_body", "kind"),
    [
        (
            "rules",
            MAIN,
            "rules:\n  - name: main-rule\n    source: app\n    match: x\n",
            "rule",
        ),
        ("sources", MAIN, "sources:\n  app: {file: /var/log/other.log}\n", "source"),
        ("webhooks", MAIN, "webhooks:\n  ops: {url: 'http://127.0.0.1:9/b'}\n", "webhook"),
    ],
)
def test_a_name_defined_in_two_files_is_an_error_naming_both_places(
    tmp_path: Path, section: str, main_body: str, included_body: str, kind: str
) -> None:
    main = write(tmp_path / "rules.yaml", main_body.replace("source: web", "source: app"))
    inc = write(tmp_path / "rules.d" / "dup.yaml", included_body)
    errs = errors_of(main)
    first = {"rules": f"{main}:8:11", "sources": f"{main}:4:3", "webhooks": f"{main}:6:3"}
    second = {"rules": f"{inc}:2:11", "sources": f"{inc}:2:3", "webhooks": f"{inc}:2:3"}
    [err] = [e for e in errs if "already defined" in e]
    assert err.startswith(f"{second[section]}: {kind} '")
    assert f"already defined at {first[section]} —" in err
    assert errs == [err]


# ---------------------------------------------------------------- detector check


def check(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "detector", "check", *args],
        check=False,
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "WEB_TOKEN": "s3cret-token"},
        timeout=60,
    )


def test_check_lists_every_file_it_read_and_says_when_a_glob_matched_nothing(
    tmp_path: Path,
) -> None:
    main = write(
        tmp_path / "rules.yaml", MAIN.replace("[rules.d/*.yaml]", "[rules.d/*.yaml, none/*.yaml]")
    )
    inc = write(
        tmp_path / "rules.d" / "web.yaml",
        WEB + "webhooks:\n  chat: {url: 'http://127.0.0.1:9/hook?token=${WEB_TOKEN}'}\n",
    )
    out = check("-c", str(main), "--env-file", "/dev/null")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == f"{main}: OK — 2 sources, 2 rules, 2 webhooks"
    assert lines[1:4] == [
        f"  read {main}",
        f"  read {inc} (include rules.d/*.yaml)",
        f"  include none/*.yaml: matches no file ({tmp_path}/none/*.yaml), nothing read",
    ]
    assert "s3cret-token" not in out.stdout


def test_check_of_a_broken_included_file_exits_2_naming_it(tmp_path: Path) -> None:
    main = write(tmp_path / "rules.yaml", MAIN)
    inc = write(tmp_path / "rules.d" / "web.yaml", WEB.replace("notify: ops", "notify: opz"))
    out = check("-c", str(main))
    assert out.returncode == 2
    assert f"{inc}:7:13: rule 'web-rule': notify: unknown webhook 'opz' — did you mean 'ops'?" in (
        out.stderr
    )


# ---------------------------------------------------------------- the file watch


async def next_change(changes: AsyncIterator[Snapshot], within: float = 10) -> Snapshot:
    async with asyncio.timeout(within):
        return await anext(changes)


def included(snap: Snapshot) -> set[str]:
    return {path for path, _ in snap[2]}


async def test_the_watch_sees_a_changed_a_new_and_a_removed_included_file(tmp_path: Path) -> None:
    main = write(tmp_path / "rules.yaml", MAIN)
    pattern = str(tmp_path / "rules.d" / "*.yaml")
    web = write(tmp_path / "rules.d" / "web.yaml", WEB)
    new = tmp_path / "rules.d" / "new.yaml"
    base = snapshot(main, (pattern,))
    changes = config_changes(main, lambda: base, 0.02)
    web.write_text(WEB + "# edited\n")
    snap = await next_change(changes)
    assert included(snap) == {str(web)} and snap[2] != base[2] and snap[1] == base[1]
    write(new, "rules: []\n")
    assert included(await next_change(changes)) == {str(web), str(new)}
    web.unlink()
    assert included(await next_change(changes)) == {str(new)}
    main.write_text(MAIN + "# edited\n")
    snap = await next_change(changes)
    assert snap[1] is not None and snap[1] != base[1]
    await changes.aclose()


async def test_a_new_baseline_brings_new_globs_and_what_differs_from_it_is_a_change(
    tmp_path: Path,
) -> None:
    main = write(tmp_path / "rules.yaml", MAIN)
    write(tmp_path / "a.d" / "x.yaml", "rules: []\n")
    later = write(tmp_path / "b.d" / "y.yaml", "rules: []\n")
    base = snapshot(main, (str(tmp_path / "a.d" / "*.yaml"),))
    changes = config_changes(main, lambda: base, 0.02)
    waiting = asyncio.ensure_future(next_change(changes))
    # a reload read the config, which now includes b.d/*.yaml: its files as they were then
    base = snapshot(main, (str(tmp_path / "b.d" / "*.yaml"),))
    later.write_text("rules: []\n# edited\n")  # after that reload: a change
    snap = await waiting
    assert snap[0] == base[0] and included(snap) == {str(later)}
    await changes.aclose()


# ---------------------------------------------------------------- the running agent


RULES_MAIN = """\
include: [rules.d/*.yaml]
sources:
  app: {{file: "{log}"}}
rules:
  - name: errors
    source: app
    match: 'ERROR (?P<n>\\d+)'
    group_by: [n]
    repeat: never
"""

INCLUDED = """\
rules:
  - name: {name}
    source: app
    match: '{word} (?P<n>\\d+)'
    group_by: [n]
    repeat: never
"""


def alerts_of(rx: Receiver, rule: str) -> list[str]:
    return [
        a["labels"]["n"]
        for b in rx.bodies()
        for a in b["alerts"]
        if a["labels"]["rule"] == rule and a["status"] == "firing"
    ]


async def test_the_agent_reloads_when_an_included_file_changes_appears_or_goes(
    tmp_path: Path,
) -> None:
    log = tmp_path / "app.log"
    log.touch()
    clock = FakeClock(T0)
    rules_d = tmp_path / "rules.d"
    async with Receiver() as rx:
        cfg = write_config(
            tmp_path / "rules.yaml",
            RULES_MAIN.format(log=log),
            state=tmp_path / "state.db",
            url=rx.url + "/hook",
        )
        async with running(cfg, clock) as agent:
            await until(lambda: hasattr(agent, "pipeline") and agent.state.caught_up)
            assert agent.config.files == (str(cfg),)

            def reloads() -> float:
                return agent.health.value("config_reloads", result="ok")

            # a new file matching the glob: what `detector discover` writes
            write(rules_d / "discovered.yaml", INCLUDED.format(name="found", word="WARN"))
            await until(lambda: reloads() >= 1, within=20, what="the reload of a new file")
            assert [r.name for r in agent.config.rules] == ["errors", "found"]
            with log.open("a") as f:
                f.write("WARN 1\n")
            await until(lambda: alerts_of(rx, "found") == ["1"], clock, what="the new rule")

            # a change of an included file
            write(rules_d / "discovered.yaml", INCLUDED.format(name="found", word="CRIT"))
            await until(lambda: reloads() >= 2, within=20, what="the reload of a changed file")
            with log.open("a") as f:
                f.write("WARN 2\nCRIT 3\n")
            await until(lambda: alerts_of(rx, "found") == ["1", "3"], clock, what="the change")

            # an included file removed
            (rules_d / "discovered.yaml").unlink()
            await until(lambda: reloads() >= 3, within=20, what="the reload of a removal")
            assert [r.name for r in agent.config.rules] == ["errors"]
            with log.open("a") as f:
                f.write("CRIT 4\nERROR 5\n")
            await until(lambda: rule_alerts(rx) != [], clock, what="the main rule")
            assert alerts_of(rx, "found") == ["1", "3"]


async def test_a_broken_included_file_is_refused_and_its_fix_reloads(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    log.touch()
    clock = FakeClock(T0)
    async with Receiver() as rx:
        cfg = write_config(
            tmp_path / "rules.yaml",
            RULES_MAIN.format(log=log).replace("rules.d/*.yaml", "new.d/*.yaml"),
            state=tmp_path / "state.db",
            url=rx.url + "/hook",
        )
        async with running(cfg, clock) as agent:
            await until(lambda: hasattr(agent, "pipeline") and agent.state.caught_up)
            # the main file starts including another glob whose one file is broken
            write(tmp_path / "more.d" / "x.yaml", INCLUDED.format(name="x", word="(X"))
            cfg.write_text(cfg.read_text().replace("new.d/*.yaml", "more.d/*.yaml"))
            await until(
                lambda: agent.health.value("config_reloads", result="refused") >= 1,
                within=20,
                what="the refused reload",
            )
            assert [r.name for r in agent.config.rules] == ["errors"]
            # fixing the included file (the config in force does not include it yet) reloads
            write(tmp_path / "more.d" / "x.yaml", INCLUDED.format(name="x", word="X"))
            await until(
                lambda: agent.health.value("config_reloads", result="ok") >= 1,
                within=20,
                what="the reload of the fix",
            )
            assert [r.name for r in agent.config.rules] == ["errors", "x"]
            assert agent.config.files[1] == str(tmp_path / "more.d" / "x.yaml")
