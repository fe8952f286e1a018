"""Small builders shared by the tests: configs and lines without YAML."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from detector.model import (
    AgentConfig,
    Config,
    Defaults,
    FileSourceConfig,
    RuleConfig,
    WebhookConfig,
)
from detector.rules.base import When
from detector.sources.base import Line

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
LOGHUB = Path(__file__).resolve().parents[1].parent / "shared" / "testdata" / "loghub" / "2k"
"""The Loghub 2k samples: ``../shared/testdata`` beside the repository, as CI lays it."""


def loghub_log(name: str = "*") -> list[Path]:
    """The Loghub sample logs (``name``: a dataset, e.g. ``OpenSSH``; default all). Missing
    samples are an error that says where they belong, never a skipped test."""
    logs = sorted(LOGHUB.glob(f"{name}/*_2k.log"))
    if not logs:
        raise FileNotFoundError(
            f"no Loghub sample {name!r} under {LOGHUB}: the tests read ../shared/testdata beside "
            "the repository (CI lays it there); put a copy of shared/ next to the checkout"
        )
    return logs


def at(seconds: float = 0, base: datetime = T0) -> datetime:
    return base + timedelta(seconds=seconds)


def when(seconds: float = 0) -> When:
    return When.exact(at(seconds))


def rule(name: str = "r", kind: str = "error", **kw: Any) -> RuleConfig:
    kw.setdefault("sources", ("s",))
    kw.setdefault("match", "ERROR")
    kw.setdefault("notify", ("hook",))
    return RuleConfig(name=name, kind=kind, **kw)  # type: ignore[arg-type]


def config(*rules: RuleConfig, state: Path | None = None, host: str = "h1") -> Config:
    return Config(
        path="test.yaml",
        agent=AgentConfig(state=state or Path(":memory:"), host=host),
        defaults=Defaults(),
        sources={"s": FileSourceConfig(name="s", paths=("/nonexistent/s.log",))},
        webhooks={"hook": WebhookConfig(name="hook", url="http://127.0.0.1:9/")},
        rules=tuple(rules),
    )


def line(text: str, source: str = "s") -> Line:
    return Line(source=source, text=text)
