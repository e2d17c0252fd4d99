"""Making target-controlled strings (comm, thread names, symbols, cmdline) safe to print.

A traced program chooses its thread names and can ship symbols with any bytes in them; printed raw they
could inject rich markup ("[link=...]") or terminal escape sequences (clear screen, retitle the window).
"""

from __future__ import annotations

import re

from rich.markup import escape
from rich.text import Text

# C0 controls (including ESC, CR, LF, TAB), DEL and C1 controls; C1 0x9b is a one-byte CSI on some terminals.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def visible(value: object) -> str:
    """The string with every control character shown as a \\xNN escape."""
    return _CONTROL.sub(lambda match: f"\\x{ord(match.group()):02x}", str(value))


def markup_safe(value: object) -> str:
    """For places that interpret rich markup: controls made visible, then markup escaped."""
    return escape(visible(value))


def plain(value: object) -> Text:
    """A rich Text cell: never parsed as markup, controls made visible."""
    return Text(visible(value))
