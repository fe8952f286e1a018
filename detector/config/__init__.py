"""rules.yaml → the typed :class:`~detector.model.Config`: the public face of the config loader.

Sits at the very start of the flow: the CLI and the service call :func:`load_config` and hand the
resulting config to sources, matching, rules and delivery; nothing downstream ever sees YAML. The
work is split by job: ``load.py`` drives one load, ``nodes.py`` reads YAML nodes with their
positions and collects problems, ``values.py`` expands ``${VAR}`` and reads durations,
``sections.py`` reads ``agent:``/``defaults:``/``sources:``/``webhooks:``, ``rules.py`` reads each
rule's common keys and decides its kind, and ``kinds.py`` reads the per-kind specs. This module only
re-exports the public API, so ``from detector.config import load_config`` keeps working.
"""

from detector.config.load import load_config, parse_config
from detector.config.nodes import ConfigError
from detector.config.rules import BUILTIN_FIELDS
from detector.config.sections import JOURNALD_PRIORITIES
from detector.config.values import format_duration, interpolate, parse_duration

__all__ = [
    "BUILTIN_FIELDS",
    "JOURNALD_PRIORITIES",
    "ConfigError",
    "format_duration",
    "interpolate",
    "load_config",
    "parse_config",
    "parse_duration",
]
