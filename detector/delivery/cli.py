"""``detector send-test WEBHOOK``: one test alert through the real format and transport."""

from __future__ import annotations

import argparse
import asyncio
import sys

from detector.delivery.sendtest import send_test


def send_test_main(args: argparse.Namespace) -> int:
    from detector.cli_support import (  # noqa: PLC0415 - the CLI layer, above delivery
        EXIT_FINDINGS,
        EXIT_OK,
        EXIT_USAGE,
        load_config_or_exit,
    )

    config = load_config_or_exit(args)
    webhook = config.webhooks.get(args.webhook)
    if webhook is None:
        names = ", ".join(sorted(config.webhooks)) or "none"
        print(f"no webhook named {args.webhook!r} (have: {names})", file=sys.stderr)
        return EXIT_USAGE
    result = asyncio.run(send_test(webhook, config.agent.host))
    status: object = result.status
    if status is None:  # email and exec answer without an HTTP status
        status = "accepted" if result.ok else "no answer"
    print(f"webhook {webhook.name} ({webhook.format}): {status}")
    if result.body:
        print(f"response: {result.body}")
    if result.error:
        print(f"error: {result.error}", file=sys.stderr)
    print("OK: the receiver accepted the test alert" if result.ok else "FAILED")
    return EXIT_OK if result.ok else EXIT_FINDINGS
