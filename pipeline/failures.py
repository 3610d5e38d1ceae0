"""Failure reasons grouped, so 2,000 failures read as a few lines: pure functions.

A reason names the particular case ("image is 9000x9000 = 81000000 pixels, over
the limit of 50000000", "HTTP 404 after 3 attempts"); the group keeps its words
and drops what differs from image to image: numbers (but an HTTP status, which
is the point), quoted excerpts, and addresses. Groups are computed when a
result is recorded and stored beside it, so a status answer counts them with
an index instead of reading every failed image.
"""

from __future__ import annotations

import re

# An HTTP status stays: "HTTP 404" and "HTTP 503" are different news.
_HTTP_STATUS = re.compile(r"\bHTTP (\d{3})\b")
_URL = re.compile(r"\b[a-z][a-z0-9+.-]*://\S+", re.IGNORECASE)
_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")
_ADDRESS = re.compile(r"\[[0-9a-f:.]+\](?::\d+)?|\b\d{1,3}(?:\.\d{1,3}){3}(?::\d+)?\b", re.I)
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
_SPACES = re.compile(r"\s+")
MAX_GROUP_CHARS = 200


def reason_group(reason: str) -> str:
    """The reason with what varies between images replaced by a placeholder."""
    text = _URL.sub("<url>", reason)
    text = _QUOTED.sub("'…'", text)
    text = _ADDRESS.sub("<address>", text)
    # split() keeps each status (the group) at the odd places, numbers out elsewhere.
    parts = _HTTP_STATUS.split(text)
    text = "".join(
        f"HTTP {part}" if odd else _NUMBER.sub("N", part)
        for odd, part in ((i % 2 == 1, p) for i, p in enumerate(parts))
    )
    return _SPACES.sub(" ", text).strip()[:MAX_GROUP_CHARS]
