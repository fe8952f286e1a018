"""Property tests: hostile alerts (huge fields, emoji and other UTF-16 surrogate pairs, mentions,
markdown links, quotes, a runbook that is not a URL) rendered by every format stay within the
limits of its service, written here from the service's documentation."""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import parse_qs, urlsplit

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from detector.delivery import formats
from detector.model import WebhookConfig
from tests.test_formats import NOW, alert

# Slack, https://api.slack.com/reference/block-kit/blocks: header text 150, section text 3000,
# 10 fields of 2000, 50 blocks; context 10 elements.
SLACK_HEADER, SLACK_SECTION, SLACK_FIELDS, SLACK_FIELD, SLACK_BLOCKS = 150, 3000, 10, 2000, 50
SLACK_TEXT = 40_000  # chat.postMessage: text is truncated after 40,000 characters
# Discord, https://discord.com/developers/docs/resources/message#embed-object-embed-limits
# (lengths in UTF-16 units): content 2000, title 256, description 4096, 25 fields of 256/1024,
# footer 2048, 6000 in all.
DISCORD = {"content": 2000, "title": 256, "description": 4096, "footer": 2048, "total": 6000}
# Teams, learn.microsoft.com … webhooks-and-connectors/how-to/connectors-using: 28 KB a message.
TEAMS_BYTES = 28 * 1024
# ntfy, https://docs.ntfy.sh/publish/#limitations: a message of 4,096 bytes.
NTFY_BYTES = 4096
# PagerDuty, developer.pagerduty.com/docs/events-API-v2/trigger-events: 512 KB an event,
# summary 1024 characters, dedup_key 255.
PD_BYTES, PD_SUMMARY, PD_DEDUP = 512 * 1024, 1024, 255

HOSTILE = [
    "<!channel>",
    "<!here|here>",
    "<@U024BE7LH>",
    "@everyone",
    "@here",
    "<at>Jane</at>",
    "[click](http://evil.example)",
    "http://evil.example/x",
    "**bold** _it_ ~s~ `code` ```block```",
    '"quoted" \\ & < >',
    "😀🎉𝄞",
    "\x00\x1f",
    "# heading\n> quote",
]
pieces = st.one_of(st.sampled_from(HOSTILE), st.text(max_size=40))
texts = st.lists(pieces, max_size=30).map("".join)
huge = st.builds(lambda p, n: p * n, st.sampled_from([*HOSTILE, "x", "é"]), st.integers(0, 5000))
field_text = st.one_of(texts, huge)


@st.composite
def hostile_alerts(draw: st.DrawFn) -> dict[str, Any]:
    status = draw(st.sampled_from(["firing", "resolved", "info", "repeat"]))
    labels = draw(
        st.dictionaries(st.from_regex(r"[a-z]{1,12}", fullmatch=True), field_text, max_size=30)
    )
    return alert(
        notification=status,
        status="resolved" if status == "resolved" else "firing",
        resolved_at="2026-03-01T12:10:00.000Z" if status == "resolved" else None,
        summary=draw(st.one_of(st.just(""), field_text)),
        description=draw(field_text),
        labels={"host": "db1", "rule": "nginx-5xx", **labels},
        samples=draw(st.lists(field_text, max_size=20)),
        runbook=draw(
            st.sampled_from(
                [
                    "ask the db team",
                    "wiki/backup",
                    None,
                    "https://wiki.example.internal/nginx",
                    'javascript:alert("x")',
                ]
            )
        ),
        owner=draw(st.one_of(st.none(), texts)),
    )


def hook(fmt: str) -> WebhookConfig:
    urls = {
        "ntfy": "https://ntfy.example.internal/ops-alerts",
        "pagerduty": "https://events.pagerduty.com/v2/enqueue",
        "alertmanager": "http://am.example.internal:9093",
        "discord": "https://discord.com/api/webhooks/1/tok?thread_id=9",
    }
    return WebhookConfig(
        name=fmt,
        url=urls.get(fmt, f"https://hooks.example.internal/{fmt}"),
        format=fmt,  # type: ignore[arg-type]
        routing_key="k" * 32 if fmt == "pagerduty" else None,
    )


def render(fmt: str, a: dict[str, Any]) -> tuple[str, bytes, Any]:
    r = formats.render(a, hook(fmt), attempt=1, now=NOW)
    body = r.body()
    return r.url, body, json.loads(body)


def u16(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def is_http(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme in ("http", "https") and bool(parts.hostname) and " " not in url


def strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in strings(v)]
    return []


EXAMPLES = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@EXAMPLES
@given(hostile_alerts())
def test_slack_within_block_kit_limits_and_pings_nobody(a: dict[str, Any]) -> None:
    _, _, body = render("slack", a)
    blocks = body["blocks"]
    assert len(blocks) <= SLACK_BLOCKS and u16(body["text"]) <= SLACK_TEXT
    assert u16(blocks[0]["text"]["text"]) <= SLACK_HEADER
    for b in blocks[1:]:
        if "text" in b:
            assert u16(b["text"]["text"]) <= SLACK_SECTION
        if "fields" in b:
            assert len(b["fields"]) <= SLACK_FIELDS
            assert all(u16(f["text"]) <= SLACK_FIELD for f in b["fields"])
        if b["type"] == "context":
            assert len(b["elements"]) <= 10
    for text in strings(body):
        # the only '<' left is our own runbook link, to an absolute http(s) URL
        for m in re.finditer(r"<([^>]*)>", text):
            assert m.group(1).startswith(("http://", "https://")) and m.group(1).endswith(
                "|Runbook"
            )
        assert "<!" not in text and "<@" not in text
    assert "FIRING" not in body["text"] or a["notification"] != "info"


@EXAMPLES
@given(hostile_alerts())
def test_discord_within_embed_limits_in_utf16_units_and_waits(a: dict[str, Any]) -> None:
    url, _, body = render("discord", a)
    query = parse_qs(urlsplit(url).query)
    assert query["wait"] == ["true"] and query["thread_id"] == ["9"]
    assert body["allowed_mentions"] == {"parse": []}
    (embed,) = body["embeds"]
    assert u16(body["content"]) <= DISCORD["content"]
    assert u16(embed["title"]) <= DISCORD["title"]
    assert u16(embed["description"]) <= DISCORD["description"]
    assert u16(embed["footer"]["text"]) <= DISCORD["footer"]
    assert len(embed["fields"]) <= 25
    assert all(u16(f["name"]) <= 256 and 0 < u16(f["value"]) <= 1024 for f in embed["fields"])
    total = u16(embed["title"]) + u16(embed["description"]) + u16(embed["footer"]["text"])
    total += sum(u16(f["name"]) + u16(f["value"]) for f in embed["fields"])
    assert total <= DISCORD["total"]
    assert "url" not in embed or is_http(embed["url"])
    for text in [body["content"], embed["title"], *(f["value"] for f in embed["fields"])]:
        assert "](" not in text and "://" not in text


@EXAMPLES
@given(hostile_alerts())
def test_teams_within_28_kb_and_no_mention_link_or_markup(a: dict[str, Any]) -> None:
    _, raw, body = render("teams", a)
    assert len(raw) <= TEAMS_BYTES
    card = body["attachments"][0]["content"]
    for text in strings(card["body"]):
        assert "<at" not in text.lower() and "](" not in text and "://" not in text
        assert "**" not in text
    for action in card.get("actions", []):
        assert is_http(action["url"])


@EXAMPLES
@given(hostile_alerts())
def test_ntfy_message_within_4096_bytes(a: dict[str, Any]) -> None:
    _, _, body = render("ntfy", a)
    assert len(body["message"].encode()) <= NTFY_BYTES
    assert body["topic"] == "ops-alerts"
    assert "click" not in body or is_http(body["click"])
    assert all(is_http(x["url"]) for x in body.get("actions", []))
    if a["notification"] == "info":
        assert body["priority"] == 2


@EXAMPLES
@given(hostile_alerts())
def test_pagerduty_within_events_api_limits_and_info_is_a_change_event(a: dict[str, Any]) -> None:
    url, raw, body = render("pagerduty", a)
    assert len(raw) <= PD_BYTES
    if a["notification"] == "info":
        assert url == "https://events.pagerduty.com/v2/change/enqueue"
        assert "event_action" not in body and "dedup_key" not in body
    else:
        assert len(body["dedup_key"]) <= PD_DEDUP and body["dedup_key"].startswith("db1/")
    if "payload" in body:
        assert 0 < len(body["payload"]["summary"]) <= PD_SUMMARY
    assert all(is_http(x["href"]) for x in body.get("links", []))


@EXAMPLES
@given(hostile_alerts())
def test_alertmanager_and_json_generator_url_is_a_url_or_absent(a: dict[str, Any]) -> None:
    _, _, posted = render("alertmanager", a)
    (entry,) = posted
    assert "generatorURL" not in entry or is_http(entry["generatorURL"])
    assert all(isinstance(v, str) for v in {**entry["labels"], **entry["annotations"]}.values())
    assert entry["annotations"]["summary"]  # an empty summary got the default one
    _, _, envelope = render("json", a)
    (item,) = envelope["alerts"]
    assert item["generatorURL"] == "" or is_http(item["generatorURL"])
    if a["notification"] == "info":
        assert item["status"] == "resolved" and item["labels"]["notification"] == "info"
        assert entry["labels"]["notification"] == "info"
