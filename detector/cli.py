"""The ``detector`` command: run | reload | note-stop | check | test | discover | status |
outbox | silence | send-test | templates | version.

The top of the flow: parses the arguments and hands each command to its module. Every command
follows one exit-code convention (0 ok, 1 findings, 2 usage or config error; see
:mod:`detector.cli_support`), and a closed output pipe (``detector check | head -1``) ends any of
them quietly.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from detector import __version__

if TYPE_CHECKING:
    from detector.matching import Matcher
    from detector.model import Config, SourceConfig

DEFAULT_CONFIG = "/etc/detector/rules.yaml"


def _default_config() -> str:
    env = os.environ.get("DETECTOR_CONFIG")
    if env:
        return env
    return "rules.yaml" if Path("rules.yaml").exists() else DEFAULT_CONFIG


def _add_config(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-c",
        "--config",
        default=None,
        help="rules.yaml to use (default: $DETECTOR_CONFIG, else ./rules.yaml, else "
        "/etc/detector/rules.yaml)",
    )


def _add_env_file(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--env-file",
        default=None,
        metavar="FILE",
        help="systemd EnvironmentFile= whose variables the ${VAR}s of rules.yaml see, over the "
        "environment (default: /etc/detector/detector.env, the unit's, when it exists and is "
        "readable)",
    )


def _columns() -> int:
    """``shutil.get_terminal_size().columns``, without importing ``shutil`` (and its bz2, lzma
    and zlib) for every command."""
    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns or 80


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose help formatter is told the width (argparse makes one for
    every argument added, and without a width each imports ``shutil`` to ask the terminal)."""

    def _get_formatter(self) -> argparse.HelpFormatter:
        return self.formatter_class(prog=self.prog, width=_columns() - 2)  # type: ignore[call-arg]


def _add_silence_arguments(p: argparse.ArgumentParser) -> None:
    """``detector silence``'s arguments: here, not in ``silence_cli`` (whose imports, the config
    loader among them, every command would pay to build its parser)."""
    p.add_argument("action", choices=("add", "list", "expire"))
    p.add_argument("id", nargs="?", metavar="ID", help="expire: the silence (a unique prefix)")
    p.add_argument("--rule", action="append", default=[], metavar="R", help="add: rule R")
    p.add_argument(
        "--match",
        action="append",
        default=[],
        metavar="LABEL=VALUE",
        help="add: a matcher on the alert's labels: label=value, label!=value, label=~regex, "
        "label!~regex (repeatable; all must match)",
    )
    p.add_argument("--for", dest="duration", metavar="DURATION", help="add: how long, e.g. 2h")
    p.add_argument("--comment", default="", help="add: why (shown in status and list)")
    p.add_argument("--author", default=None, help="add: who (default: $SUDO_USER, else $USER)")
    p.add_argument("--format", choices=("text", "json"), default="text", help="list: output")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="detector",
        description="Log-tailing anomaly and silence detector: tails files and journald, matches "
        "rules.yaml, remembers state in SQLite and posts alerts to webhooks.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "run",
        help="run the agent",
        description="Run the agent in the foreground. Exit 0 after a clean stop, 2 if rules.yaml "
        "is invalid, 3 if the state file cannot be used (its own codes: it is what systemd runs).",
    )
    _add_config(p)
    p.add_argument(
        "--log-format",
        choices=("auto", "text", "json", "journal"),
        default=None,
        help="auto (default): native journal entries when stderr is the journal, else text; "
        "default $DETECTOR_LOG_FORMAT, else agent: log_format in rules.yaml, else auto",
    )
    p.add_argument("--log-level", default="INFO")

    p = sub.add_parser(
        "reload",
        help="reload the running agent and wait for its answer",
        description="Validate rules.yaml, send SIGHUP to the agent and wait until it answers "
        "(systemd's ExecReload). Exit 0 once the agent runs the new configuration; 1 if the "
        "agent refused it (its error is printed); 2 if the file is invalid (nothing is "
        "signalled), there is no agent to ask, it exited, or it did not answer in time.",
    )
    _add_config(p)
    p.add_argument(
        "--pid",
        type=_positive_int,
        default=None,
        help="the agent's process id (default: $MAINPID, which systemd sets for ExecReload)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="how long to wait for the agent's answer (default 30)",
    )

    p = sub.add_parser(
        "note-stop",
        help="record why systemd saw the agent stop (the unit's ExecStopPost)",
        description="Store $SERVICE_RESULT, $EXIT_CODE and $EXIT_STATUS (set by systemd for "
        "ExecStopPost) in the state file, so that the agent's next start can say why it was "
        "restarted (watchdog, a signal, OOM…). Always exits 0.",
    )
    _add_config(p)
    p.add_argument("--state", help="the state file (default: agent.state of rules.yaml)")

    p = sub.add_parser(
        "check",
        help="validate rules.yaml",
        description="Validate rules.yaml: exit 0 if it is valid, 2 with every error otherwise.",
    )
    _add_config(p)
    _add_env_file(p)
    p.add_argument(
        "--routes",
        action="store_true",
        help="also print, for each rule, the webhooks its alerts go to and why (its own "
        "notify:, the routes: that match, or defaults.notify)",
    )
    p.add_argument(
        "--timings",
        nargs="?",
        type=int,
        const=20,
        metavar="N",
        help="also show the N rules (default 20) slowest to compile, each measured alone, and "
        "what each costs to match the --sample lines",
    )
    p.add_argument(
        "--sample",
        type=Path,
        metavar="FILE",
        help="with --timings: a log file whose lines (the first 100,000) each rule is matched on",
    )

    p = sub.add_parser(
        "test",
        help="dry-run log files through the rules",
        description="Replay log files through the real matcher and rule evaluators with simulated "
        "time taken from the lines' timestamps, and print what would have fired and when: the "
        "clock starts at the first line's time and every deadline fires at its own time. Nothing "
        "is sent and no state is written. Exit 0 if no alert would fire, 1 if some would, 2 if "
        "rules.yaml or a FILE cannot be used.",
    )
    _add_config(p)
    _add_env_file(p)
    p.add_argument("files", nargs="+", metavar="FILE", help="log files to replay (- for stdin)")
    p.add_argument("--source", help="treat the lines as coming from this source")
    p.add_argument(
        "--time-format",
        help="strptime format of the timestamp at the line start (default: the source's "
        "time_format:, else every known format)",
    )
    p.add_argument(
        "--until",
        metavar="TIME",
        help="how far deadlines play out after the last line: a time (ISO 8601), +DURATION "
        "after the last line (e.g. +6h), or now (default: the last line's time)",
    )
    p.add_argument(
        "--format",
        choices=("text", "json"),
        default="text",
        help="json: one JSON object per notification (time, kind, rule, key, notification, "
        "severity, summary), nothing else on stdout",
    )
    p.add_argument("--samples", type=int, default=3, help="sample lines to show per rule")
    p.add_argument("--quiet", action="store_true", help="only the summary")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--jobs",
        type=_positive_int,
        default=1,
        metavar="N",
        help="match in N worker processes while this one evaluates the rules in line order "
        "(same output; faster on big files when CPUs are idle; stdin is always read in one "
        "process; default 1)",
    )

    p = sub.add_parser(
        "discover",
        help="propose rules for every scheduled job (cron, systemd timers)",
        description="Read the host's crontabs, cron.d, user crontabs, cron.daily & co. (run-parts "
        "or anacron) and systemd timers, and print a commented rules.yaml snippet per job: a "
        "window (or heartbeat) on the log line that says it ran, an error rule on the line that "
        "says it failed, and the sources they need. --since/--logs check each window against "
        "what the logs say happened (and find jobs in the logs alone). Exit 0; 1 when --write "
        "found the file edited and wrote FILE.new beside it instead; 2 for bad arguments.",
    )
    p.add_argument("--root", metavar="DIR", help="read the schedules under DIR (default: /)")
    p.add_argument(
        "--since",
        metavar="DURATION",
        help="check the proposals against this much history (e.g. 30d): the journal, or --logs",
    )
    p.add_argument(
        "--logs",
        nargs="+",
        metavar="FILE",
        help="log files to learn from instead of the journal (syslog, cron logs)",
    )
    p.add_argument(
        "--write",
        metavar="PATH",
        help="write the rules to PATH (e.g. rules.d/discovered.yaml) for include:, marked "
        "generated; an edited PATH is never overwritten (PATH.new is written instead)",
    )
    p.add_argument(
        "--timezone",
        metavar="TZ",
        help="zone of schedules without one and of log stamps without an offset (default: the "
        "root's /etc/timezone or /etc/localtime, else the host's)",
    )
    p.add_argument(
        "--namespace",
        metavar="NAME",
        help="with --since and no --logs: read the journal of this journald namespace of the "
        "host (journalctl --namespace), even with --root",
    )

    p = sub.add_parser(
        "status",
        help="show sources, rules, alerts and the outbox",
        description="Show what the state file knows: source positions, rule state, firing alerts "
        "and the delivery outbox.",
    )
    _add_config(p)
    _add_env_file(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser(
        "outbox",
        help="list pending, failing and dead notifications; re-queue dead letters",
        description="List the delivery outbox per webhook: pending, failing (held or retrying, "
        "with last error and next attempt) and dead rows. `detector outbox retry` puts dead "
        "letters back in the queue (due now, attempts reset); a running agent sends them "
        "within 30 s.",
    )
    _add_config(p)
    _add_env_file(p)
    p.add_argument("action", nargs="?", choices=("list", "retry"), default="list")
    p.add_argument("--webhook", metavar="W", help="only this webhook")
    p.add_argument("--id", metavar="EVENT", help="retry: only the dead letter with this event id")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--limit", type=int, default=20, help="rows shown per webhook and state")

    p = sub.add_parser(
        "silence",
        help="add, list or expire silences (alerts recorded but not notified)",
        description="Silences in the state file: `add (--rule R | --match label=value …) --for "
        "2h --comment …`, `list [--format json]` (active and ended in the last 7 days), `expire "
        "ID`. The running agent applies a change within a second, without a reload.",
    )
    _add_config(p)
    _add_env_file(p)
    _add_silence_arguments(p)

    p = sub.add_parser(
        "send-test",
        help="send a test alert to a webhook",
        description="Send a test alert through the real delivery path to WEBHOOK and print the "
        "receiver's answer. Exit 0 if it was accepted, 1 if not, 2 if there is no such webhook.",
    )
    _add_config(p)
    _add_env_file(p)
    p.add_argument("webhook", metavar="WEBHOOK", help="webhook name from rules.yaml")

    p = sub.add_parser(
        "templates",
        help="list learned log templates (anomaly: new)",
        description="List the templates learned by `anomaly: new` rules, with counts and "
        "first/last seen; --known marks one as known so it never alerts.",
    )
    _add_config(p)
    _add_env_file(p)
    p.add_argument("--rule", help="only this rule")
    p.add_argument("--known", metavar="TEMPLATE_ID", help="mark this template as known")

    sub.add_parser("version", help="print version and engines", description="Print versions.")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from detector.cli_support import EXIT_BROKEN_PIPE, CommandError  # noqa: PLC0415

    try:
        try:
            args = build_parser().parse_args(argv)
            if getattr(args, "config", "") is None:
                args.config = _default_config()
            return COMMANDS[args.command](args)
        except CommandError as e:
            from detector.logs import print_error  # noqa: PLC0415

            print_error(str(e))  # under systemd: one journal entry at priority err
            return e.code
        finally:
            sys.stdout.flush()  # here (--help too), so that a closed pipe is caught below
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`detector check | head -1`). Point stdout at /dev/null so that
        # the interpreter's own flush at exit does not fail again, and stop without a word.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_BROKEN_PIPE


def cmd_version(args: argparse.Namespace) -> int:
    from detector import matching  # noqa: PLC0415 - keep `detector version` light

    print(f"detector {__version__}")
    python = sys.version.split(" ", 1)[0]  # platform.python_version(), without its import
    print(f"python {python} ({sys.executable})")
    print(f"matching engine: {matching.ENGINE}")
    from detector.sources.sdjournal import choose_reader  # noqa: PLC0415

    reader, why = choose_reader()
    print(f"journald reader: {reader} ({why})")
    return 0


def _describe_source(source: SourceConfig) -> str:
    """One line of ``detector check``: what a source reads, with the keys that narrow it."""
    from detector.model import FileSourceConfig  # noqa: PLC0415

    if isinstance(source, FileSourceConfig):
        keys = []
        if source.exclude:
            keys.append(f"exclude: {', '.join(source.exclude)}")
        if source.rotated:
            keys.append(f"rotated: {source.rotated}")
        if source.start_at != "end":
            keys.append(f"start_at: {source.start_at}")
        return f"file {', '.join(source.paths)}" + (f" ({'; '.join(keys)})" if keys else "")
    keys = [
        f"{key}: {', '.join(values)}"
        for key, values in (("units", source.units), ("identifiers", source.identifiers))
        if values
    ]
    keys += [f"{field}={', '.join(values)}" for field, values in source.match.items()]
    if source.priority is not None:
        keys.append(f"priority: {source.priority}")
    if source.namespace:
        keys.append(f"namespace: {source.namespace}")
    return "journald" + (f" ({'; '.join(keys)})" if keys else "")


def _files_read(config: Config) -> list[str]:
    """The lines of ``detector check`` that name the files it read, and each include: that
    matched no file (fine: a glob such as rules.d/*.yaml may be empty)."""
    included = {path: inc.pattern for inc in config.includes for path in inc.files}
    lines = [
        f"read {path}" + (f" (include {included[path]})" if path in included else "")
        for path in config.files or (config.path,)
    ]
    lines += [
        f"include {inc.pattern}: matches no file"
        + (f" ({inc.glob})" if inc.glob != inc.pattern else "")
        + ", nothing read"
        for inc in config.includes
        if not inc.files
    ]
    return lines


def _secrets_of(args: argparse.Namespace, files: tuple[str, ...]) -> Callable[[str], str]:
    """A redactor for what ``detector check`` prints of the loaded config: every ``${VAR}`` of
    its files (the main one and the included ones), shown by its name, never its value."""
    from detector.cli_support import config_env  # noqa: PLC0415
    from detector.config.values import redact  # noqa: PLC0415

    text = ""
    for path in files or (args.config,):
        with contextlib.suppress(OSError):
            text += Path(path).read_text(encoding="utf-8", errors="replace")
    env = config_env(getattr(args, "env_file", None))
    names = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", text))
    used = {name: env[name] for name in names if name in env}
    return lambda line: redact(line, used)


def cmd_check(args: argparse.Namespace) -> int:
    import time  # noqa: PLC0415

    from detector.cli_support import load_config_or_exit  # noqa: PLC0415
    from detector.pipeline import build_matcher  # noqa: PLC0415

    config = load_config_or_exit(args)  # an invalid file: CommandError, exit 2
    hide = _secrets_of(args, config.files)
    started = time.perf_counter()
    matcher = build_matcher(config)  # compiled as the agent will: this warms the cache
    compiled_s = time.perf_counter() - started
    print(
        f"{args.config}: OK — {len(config.sources)} sources, {len(config.rules)} rules, "
        f"{len(config.webhooks)} webhooks"
    )
    for line in _files_read(config):
        print(f"  {hide(line)}")
    from detector.model import JournaldSourceConfig  # noqa: PLC0415
    from detector.sources.sdjournal import choose_reader  # noqa: PLC0415

    for source in config.sources.values():
        print(f"  source {source.name}: {hide(_describe_source(source))}")
        if isinstance(source, JournaldSourceConfig):  # which reader, and why
            print(f"    reads with: {'; '.join(choose_reader(source))}")
    for rule in config.rules:
        flag = "" if rule.enabled else " (disabled)"
        print(f"  rule {rule.name}: {rule.kind} on {', '.join(rule.sources)}{flag}")
    for report in matcher.report():
        if report.note:
            print(f"  note: rule {report.rule} ({report.role}): {report.engine}: {report.note}")
    for warning in config.warnings:
        print(f"  warning: {warning}")
    if getattr(args, "routes", False):
        _print_routes(config)
    if args.timings is not None:
        _print_timings(config, matcher, compiled_s, args.timings, args.sample)
    return 0


def _print_routes(config: Config) -> None:
    """``detector check --routes``: where each rule's alerts go, and why."""
    from detector.routing import agent_explain, explain  # noqa: PLC0415

    print(
        "routes (first match wins unless continue: true):"
        if config.routes
        else "routes: none (each rule's notify:, else defaults.notify):"
    )
    for rule in config.rules:
        per_source = {
            src: explain(rule, config.routes, config.agent.host, src) for src in rule.sources
        }
        distinct = {tuple(v) for v in per_source.values()}
        for src, lines in per_source.items():
            where = f" (source {src})" if len(distinct) > 1 else ""
            print(f"  rule {rule.name}{where} → {lines[0]}")
            for more in lines[1:]:
                print(f"      {more}")
            if len(distinct) == 1:
                break
    print(
        f"  agent alerts → {agent_explain(config.routes, config.agent.fallback, config.webhooks)}"
    )


def _print_timings(
    config: Config, matcher: Matcher, compiled_s: float, top: int, sample_path: Path | None
) -> None:
    from detector.cli_support import CommandError  # noqa: PLC0415
    from detector.matching import rule_timings  # noqa: PLC0415
    from detector.pipeline import pattern_specs  # noqa: PLC0415

    sample: list[str] | None = None
    if sample_path is not None:
        try:
            with sample_path.open(encoding="utf-8", errors="replace") as f:
                sample = [line.rstrip("\n") for _, line in zip(range(100_000), f, strict=False)]
        except OSError as e:
            raise CommandError(f"--sample {sample_path}: {e.strerror or e}") from e
    cached = sum(matcher.cached.values())
    print(
        f"timings: all patterns compiled in {compiled_s:.3f}s "
        f"({cached} of {len(matcher.cached)} sources' databases from the cache"
        f"{'' if matcher.db_cache is not None else ', no cache'})"
    )
    for source, seconds in sorted(matcher.build_s.items(), key=lambda kv: -kv[1])[:top]:
        print(f"  source {source}: database {seconds:.3f}s")
    timings = rule_timings(pattern_specs(config.rules), sample)
    lines = f" on {len(sample):,} sample lines" if sample is not None else ""
    print(f"  slowest {min(top, len(timings))} of {len(timings)} rules, each alone{lines}:")
    for t in timings[:top]:
        match = "" if t.match_s is None else f", match {t.match_s:.3f}s ({t.matched} lines)"
        print(f"  rule {t.rule}: compile {t.compile_s:.3f}s{match}")


def cmd_run(args: argparse.Namespace) -> int:
    from detector.cli_support import tune_malloc  # noqa: PLC0415

    tune_malloc()  # before the agent starts its threads
    import asyncio  # noqa: PLC0415 - only the agent needs it (other commands start faster)
    import logging  # noqa: PLC0415

    from detector import logs  # noqa: PLC0415
    from detector.clock import SystemClock  # noqa: PLC0415
    from detector.config import ConfigError, load_config  # noqa: PLC0415
    from detector.model import LOG_FORMATS  # noqa: PLC0415
    from detector.service import Agent  # noqa: PLC0415
    from detector.store.db import StoreError  # noqa: PLC0415

    chosen = args.log_format or os.environ.get("DETECTOR_LOG_FORMAT")
    if chosen is not None and chosen not in LOG_FORMATS:
        chosen = None  # a bad environment value must not stop the agent: auto
    logs.setup(chosen or "auto", args.log_level)
    if chosen is None:
        # agent: log_format applies from the start; read at start only (a reload keeps it).
        # An unreadable or invalid file is reported by the agent below, in the format set here.
        with contextlib.suppress(ConfigError, OSError):
            logs.setup(load_config(args.config).agent.log_format, args.log_level)
    agent = Agent(Path(args.config), SystemClock())
    try:
        return asyncio.run(agent.run())
    except ConfigError as e:
        logging.getLogger("detector").error("cannot start, invalid configuration:\n%s", e)
        return 2
    except StoreError as e:
        logging.getLogger("detector").error("cannot start: %s", e)
        return 3


def _positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {n}")
    return n


def cmd_note_stop(args: argparse.Namespace) -> int:
    from detector.stopnote_cli import note_stop_main  # noqa: PLC0415

    return note_stop_main(args)


def cmd_reload(args: argparse.Namespace) -> int:
    from detector.reload_cli import reload_main  # noqa: PLC0415

    return reload_main(args)


def cmd_test(args: argparse.Namespace) -> int:
    from detector.cli_support import CommandError  # noqa: PLC0415
    from detector.replay import main as replay_main  # noqa: PLC0415

    for name in args.files:
        if name != "-":
            try:
                Path(name).open("rb").close()
            except OSError as e:
                raise CommandError(f"{name}: cannot read: {e.strerror or e}") from e
    return replay_main(args)


def cmd_discover(args: argparse.Namespace) -> int:
    from detector.discover import main as discover_main  # noqa: PLC0415

    return discover_main(args)


def cmd_status(args: argparse.Namespace) -> int:
    from detector.status import main as status_main  # noqa: PLC0415

    return status_main(args)


def cmd_outbox(args: argparse.Namespace) -> int:
    from detector.outbox_cli import main as outbox_main  # noqa: PLC0415

    return outbox_main(args)


def cmd_silence(args: argparse.Namespace) -> int:
    from detector.silence_cli import main as silence_main  # noqa: PLC0415

    return silence_main(args)


def cmd_send_test(args: argparse.Namespace) -> int:
    from detector.delivery.cli import send_test_main  # noqa: PLC0415

    return send_test_main(args)


def cmd_templates(args: argparse.Namespace) -> int:
    from detector.templates_cli import templates_main  # noqa: PLC0415

    return templates_main(args)


COMMANDS = {
    "run": cmd_run,
    "reload": cmd_reload,
    "note-stop": cmd_note_stop,
    "check": cmd_check,
    "test": cmd_test,
    "discover": cmd_discover,
    "status": cmd_status,
    "outbox": cmd_outbox,
    "silence": cmd_silence,
    "send-test": cmd_send_test,
    "templates": cmd_templates,
    "version": cmd_version,
}


if __name__ == "__main__":
    sys.exit(main())
