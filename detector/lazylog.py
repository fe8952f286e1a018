"""``logger(name)``: a logger, with ``logging`` imported when the first message is logged.

``import logging`` brings ``traceback``, ``textwrap`` and ``string`` with it (~3 ms); ``detector
check`` and ``test`` seldom log anything, so the modules they import ask for their logger here at
the moment they log, not at import. It is ``logging.getLogger``'s logger (the same object, set
up by ``logs.setup`` for the agent).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import logging


def logger(name: str) -> logging.Logger:
    import logging  # noqa: PLC0415 - see the module's docstring

    return logging.getLogger(name)
