"""``detector templates``: the log templates that ``anomaly: new`` rules learned, from the state
file; ``--known ID`` marks one as known so it never alerts (the agent picks the mark up at its next
reload: ``systemctl reload detector``)."""

from __future__ import annotations

import argparse
import sys

from detector.cli_support import EXIT_USAGE, load_config_or_exit, open_state
from detector.records import Commit
from detector.rules.anomaly_new import list_templates, mark_known
from detector.timefmt import iso


def templates_main(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime  # noqa: PLC0415

    config = load_config_or_exit(args)
    rules = [r for r in config.rules if r.kind == "anomaly_new"]
    if args.rule:
        rules = [r for r in rules if r.name == args.rule]
        if not rules:
            print(f"no `anomaly: new` rule named {args.rule!r}", file=sys.stderr)
            return EXIT_USAGE
    store = open_state(config)
    try:
        if args.known:
            for r in rules:
                items = store.load_rule_state(r.name)
                try:
                    change = mark_known(items, args.known)
                except KeyError:
                    continue
                store.commit(Commit(rule_state={r.name: change}), datetime.now(UTC))
                print(
                    f"template {args.known} of rule {r.name} marked as known "
                    "(the running agent applies it at its next reload)"
                )
                return 0
            print(f"no template with id {args.known!r}", file=sys.stderr)
            return EXIT_USAGE
        for r in rules:
            infos = list_templates(store.load_rule_state(r.name))
            print(f"rule {r.name}: {len(infos)} templates")
            print(f"  {'id':<8} {'count':>8}  {'first seen':<20} {'last seen':<20} flags  template")
            for t in infos:
                flags = (
                    ("K" if t.known else "-")
                    + ("L" if t.learned else "-")
                    + ("A" if t.alerted else "-")
                )
                first = (
                    iso(t.first_at, timespec="seconds", keep_offset=True)[:19]
                    if t.first_at
                    else "-"
                )
                last = (
                    iso(t.last_at, timespec="seconds", keep_offset=True)[:19] if t.last_at else "-"
                )
                print(f"  {t.id:<8} {t.count:>8}  {first:<20} {last:<20} {flags:<5}  {t.template}")
        print("flags: K known, L learned during the learning period, A alerted")
    finally:
        store.close()
    return 0
