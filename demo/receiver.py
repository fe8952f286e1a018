"""A tiny webhook receiver for the demo: prints every alert it is sent, one line each."""

from __future__ import annotations

import argparse
import json
import sys

from aiohttp import web


async def handle(request: web.Request) -> web.Response:
    body = await request.json()
    x = body.get("x_detector", {})
    for alert in body.get("alerts", []):
        ann = alert.get("annotations", {})
        labels = alert.get("labels", {})
        print(
            f"ALERT {x.get('notification', alert.get('status', '?')).upper():<8} "
            f"[{labels.get('severity', '?')}] {labels.get('rule', '?')}: "
            f"{ann.get('summary', '')} (count {x.get('count', '?')})",
            flush=True,
        )
    if not body.get("alerts"):
        print("ALERT (raw)", json.dumps(body)[:300], flush=True)
    return web.Response(text="ok")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--port", type=int, default=8765)
    args = ap.parse_args()
    app = web.Application()
    app.router.add_post("/alerts", handle)
    print(f"receiver listening on http://127.0.0.1:{args.port}/alerts", file=sys.stderr)
    web.run_app(app, host="127.0.0.1", port=args.port, print=None)


if __name__ == "__main__":
    main()
