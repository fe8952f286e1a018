"""Summary and description templates: ``str.format`` over a line's fields, never failing.

Users write ``"nginx upstream {upstream} timing out"``. A missing field renders as the placeholder
itself (``{upstream}``) instead of raising, and a malformed template renders verbatim, so an alert
is never lost to a template mistake (``detector check`` reports such mistakes up front).
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from typing import Any

_FORMATTER = string.Formatter()


class _Missing(dict[str, Any]):
    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def render(template: str, fields: Mapping[str, Any]) -> str:
    try:
        return template.format_map(_Missing(fields))
    except (ValueError, IndexError, AttributeError, KeyError, TypeError):
        return template


def field_names(template: str) -> set[str]:
    """The top-level field names a template refers to (``{a.b}`` → ``a``)."""
    names: set[str] = set()
    try:
        for _, name, _, _ in _FORMATTER.parse(template):
            if name:
                names.add(name.split(".")[0].split("[")[0])
    except ValueError:
        pass
    return names
