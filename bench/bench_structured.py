"""Benchmark: ``parse:`` sources beside a plain source on the same data, through ``detector test``.

Generates nginx ``escape=json`` access lines and the same events as Go-style logfmt lines (5 %
5xx answers), then replays each file through the real pipeline (``detector.replay.replay``, one
process) three ways, one rule per source (so each row evaluates the same hits): a plain source
with a ``match:`` regex on the raw line, the same file as a ``parse:`` source with a
``fields:`` rule, and with ``match:`` and ``fields:`` together (the regex prefilters, only its
hits' fields are checked; every line is still parsed and counted).
Prints lines/s per row and the ratio to the plain row of the same data.

    .venv/bin/python bench/bench_structured.py [--lines 300000] [--workdir /tmp/detector-bench]
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

from detector.config.load import load_config
from detector.replay import replay
from detector.structured import format_logfmt

PATHS = ["/", "/api/orders", "/api/orders/7", "/static/app.js", "/healthz", "/login"]
AGENTS = ["curl/8.5.0", "okhttp/4.12.0", 'Mozilla/5.0 (X11; Linux x86_64) "quoted"']


def generate(lines: int, json_path: Path, logfmt_path: Path, seed: int = 7) -> int:
    rnd = random.Random(seed)
    five = 0
    with json_path.open("w") as fj, logfmt_path.open("w") as fl:
        for i in range(lines):
            status = rnd.choice([200] * 17 + [404, 502, 504]) if i % 20 else 503
            five += status >= 500
            ts = f"2026-11-25T10:{(i // 6000) % 60:02d}:{(i // 100) % 60:02d}+00:00"
            rec = {
                "time": ts,
                "remote_addr": f"203.0.113.{rnd.randrange(256)}",
                "request_method": rnd.choice(["GET", "GET", "POST"]),
                "request_uri": rnd.choice(PATHS),
                "status": status,
                "body_bytes_sent": rnd.randrange(100, 9000),
                "request_time": f"{rnd.random():.3f}",
                "http_user_agent": rnd.choice(AGENTS),
                "upstream": {"addr": "10.0.0.5:8080", "status": status},
            }
            fj.write(json.dumps(rec, separators=(",", ":")) + "\n")
            flat = {
                "ts": ts,
                "level": "error" if status >= 500 else "info",
                "msg": "request done",
                "status": str(status),
                "path": str(rec["request_uri"]),
                "ua": str(rec["http_user_agent"]),
                "dur": f"{rnd.random():.3f}s",
            }
            fl.write(format_logfmt(flat) + "\n")
    return five


RULES = """\
version: 1
agent: {{state: {work}/unused.db, host: bench}}
defaults: {{owner: bench, runbook: https://example.invalid/rb, repeat: never}}
sources:
  plain_json: {{file: {json}}}
  parsed_json: {{file: {json}, parse: json}}
  parsed_json_both: {{file: {json}, parse: json}}
  plain_logfmt: {{file: {logfmt}}}
  parsed_logfmt: {{file: {logfmt}, parse: logfmt}}
webhooks:
  hook: {{url: http://127.0.0.1:9/unused}}
rules:
  - name: json-regex
    source: plain_json
    match: '"status":5\\d\\d,'
  - name: json-fields
    source: parsed_json
    fields: {{status: '^5\\d\\d$'}}
  - name: json-both
    source: parsed_json_both
    match: '"status":5\\d\\d,'
    fields: {{upstream.status: '^5'}}
  - name: logfmt-regex
    source: plain_logfmt
    match: ' status=5\\d\\d '
  - name: logfmt-fields
    source: parsed_logfmt
    fields: {{status: '^5\\d\\d$'}}
"""


def run(cfg_path: Path, path: Path, source: str) -> tuple[float, dict[str, int]]:
    cfg = load_config(cfg_path)
    started = time.perf_counter()
    result = replay(cfg, [(str(path), source)])
    return time.perf_counter() - started, dict(result.matches)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--lines", type=int, default=300_000)
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="detector-bench-structured-"))
    work.mkdir(parents=True, exist_ok=True)
    jpath, lpath = work / "access.json", work / "app.logfmt"
    five = generate(args.lines, jpath, lpath)
    cfg = work / "rules.yaml"
    cfg.write_text(RULES.format(work=work, json=jpath, logfmt=lpath))
    rows = [
        ("nginx JSON, plain source, match: regex", jpath, "plain_json", "json-regex", True),
        ("nginx JSON, parse: json, fields:", jpath, "parsed_json", "json-fields", False),
        (
            "nginx JSON, parse: json, match: + fields:",
            jpath,
            "parsed_json_both",
            "json-both",
            False,
        ),
        ("logfmt, plain source, match: regex", lpath, "plain_logfmt", "logfmt-regex", True),
        ("logfmt, parse: logfmt, fields:", lpath, "parsed_logfmt", "logfmt-fields", False),
    ]
    print(f"{args.lines:,} lines per file, {five:,} of them 5xx; `detector test`, one process\n")
    print("| source | lines/s | vs plain source | matches |")
    print("|---|---:|---:|---:|")
    base: float | None = None
    for title, path, source, rule, plain in rows:
        seconds, matches = run(cfg, path, source)
        rate = args.lines / seconds
        if plain:
            base = rate
        assert matches.get(rule, 0) == five, (rule, matches, five)
        ratio = f"{rate / base:.2f}×" if base else "-"
        print(f"| {title} | {rate:,.0f} | {ratio} | {matches.get(rule, 0):,} |", flush=True)


if __name__ == "__main__":
    main()
