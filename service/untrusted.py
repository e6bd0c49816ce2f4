"""Text that came from Kafka, made safe for a log line, a header or a page.

Every consumed byte is hostile until checked: a field name with a newline forges a log line,
and a 60,000-character one fills a log. `clean` escapes control characters (so the text stays
on one line and no terminal escape sequence survives) and caps the length.

>>> clean("ok\\nFAKE LOG LINE")
'ok\\\\nFAKE LOG LINE'
>>> clean("x" * 10, limit=4)
'xxxx…(+6 chars)'
"""

from typing import Final

DEFAULT_LIMIT: Final = 200

# C0 and C1 control characters, DEL, and the Unicode line and paragraph separators.
_CONTROLS: Final = [*range(0x00, 0x20), *range(0x7F, 0xA0), 0x2028, 0x2029]
_NAMED: Final = {0x09: "\\t", 0x0A: "\\n", 0x0D: "\\r"}
_ESCAPES: Final = {
    c: _NAMED.get(c, f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}") for c in _CONTROLS
}


def clean(text: str, limit: int = DEFAULT_LIMIT) -> str:
    """One line of at most `limit` characters (plus a marker saying how many were cut)."""
    cut = len(text) - limit
    if cut > 0:
        text = text[:limit]
    text = text.translate(_ESCAPES)
    return f"{text}…(+{cut} chars)" if cut > 0 else text


def clean_bytes(raw: bytes, limit: int = DEFAULT_LIMIT) -> str:
    """`clean` for bytes of unknown encoding (invalid UTF-8 is shown as replacement marks)."""
    return clean(raw[: limit * 4].decode("utf-8", errors="replace"), limit)
