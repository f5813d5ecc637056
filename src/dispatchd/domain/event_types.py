"""How readers name event types and positions in the log, as regular expressions that read
the same in Python and ECMA-262 (the OpenAPI document carries them)."""

from __future__ import annotations

# One event type name or glob: up to three dotted parts of up to 32 characters (so at most
# 98 in all, which a regular expression can say exactly).
TYPE_NAME = r"[a-z_*?]{1,32}(?:\.[a-z_*?]{1,32}){0,2}"
# A filter as `events.reader.TypeFilter.parse` reads it: names separated by commas, spaces
# around them, empty ones skipped.
TYPE_LIST_PATTERN = f"^ *(?:{TYPE_NAME} *)?(?:, *(?:{TYPE_NAME} *)?)*$"
# A cursor as `events.reader.parse_cursor` and `EventReader.start` take it.
CURSOR_PATTERN = "^(?:[0-9]{0,19}|latest)$"
