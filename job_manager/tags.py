"""Tags: an owner's labels on a job (key=value pairs), bounded and checked in one place."""

from __future__ import annotations

import re

from message_manager import SchedulerError

MAX_TAGS = 16
MAX_VALUE_CHARS = 64
_KEY = re.compile(r"[a-z0-9_.-]{1,32}")
_VALUE = re.compile(rf"[\x20-\x7e]{{0,{MAX_VALUE_CHARS}}}")  # printable ASCII

Tags = tuple[tuple[str, str], ...]


def checked_tags(pairs: list[tuple[str, str]]) -> Tags:
    """The pairs as a record keeps them (sorted by key), or SchedulerError naming the fault."""
    if len(pairs) > MAX_TAGS:
        raise SchedulerError("tags_invalid", why=f"at most {MAX_TAGS} tags, got {len(pairs)}")
    seen: dict[str, str] = {}
    for key, value in pairs:
        if not _KEY.fullmatch(key):
            raise SchedulerError("tags_invalid", why=f"key {key[:40]!r} is not 1 to 32 of "
                                                     f"a-z 0-9 _ . -")
        if not _VALUE.fullmatch(value):
            raise SchedulerError("tags_invalid", why=f"the value of {key!r} is not printable "
                                                     f"ASCII of at most {MAX_VALUE_CHARS} chars")
        if key in seen:
            raise SchedulerError("tags_invalid", why=f"key {key!r} is given twice")
        seen[key] = value
    return tuple(sorted(seen.items()))


def parse_tags(header: str) -> Tags:
    """Tags from text such as ``k1=v1,k2=v2`` (the ``x-mqc3-tags`` metadata); "" is none."""
    if not header.strip():
        return ()
    pairs = []
    for item in header.split(","):
        key, equals, value = item.partition("=")
        if not equals:
            raise SchedulerError("tags_invalid", why=f"{item[:40]!r} is not key=value")
        pairs.append((key.strip(), value.strip()))
    return checked_tags(pairs)


def parse_tag_filter(text: str) -> tuple[str, str]:
    """One ``key=value`` a listing is filtered by."""
    key, equals, value = text.partition("=")
    if not equals:
        raise SchedulerError("tags_invalid", why=f"the tag filter {text[:40]!r} is not key=value")
    return checked_tags([(key, value)])[0]
