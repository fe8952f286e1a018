"""``detector send-test WEBHOOK``: one test alert through the real format and transport."""

from __future__ import annotations

import argparse
import asyncio
import sys

from detector.delivery.sendtest import send_test


def send_test_main(args: argparse.Namespace) -> int:
    from detector.cli_support import load  # noqa: PLC0415 - the CLI layer, above delivery

    config = load(args.config)
    webhook = config.webhooks.get(args.webhook)
    if webhook is None:
        names = ", ".join(sorted(config.webhooks)) or "none"
        print(f"no webhook named {args.webhook!r} (have: {names})", file=sys.stderr)
        return 2
    result = asyncio.run(send_test(webhook, config.agent.host))
    status = result.status if result.status is not None else "no answer"
    print(f"webhook {webhook.name} ({webhook.format}): {status}")
    if result.body:
        print(f"response: {result.body}")
    if result.error:
        print(f"error: {result.error}", file=sys.stderr)
    print("OK: the receiver accepted the test alert" if result.ok else "FAILED")
    return 0 if result.ok else 1
