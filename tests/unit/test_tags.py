"""Tags: the bounds and the shapes job_manager/tags.py holds."""

from __future__ import annotations

import pytest

from job_manager.tags import MAX_TAGS, checked_tags, parse_tag_filter, parse_tags
from message_manager import SchedulerError


def test_a_header_becomes_pairs_sorted_by_key() -> None:
    assert parse_tags("b=2, a=1 ,c=") == (("a", "1"), ("b", "2"), ("c", ""))
    assert parse_tags("") == ()


@pytest.mark.parametrize("pairs", [
    [(f"k{i}", "v") for i in range(MAX_TAGS + 1)],
    [("K", "v")], [("", "v")], [("k" * 33, "v")], [("k", "x" * 65)], [("k", "tab\t")],
    [("k", "é")], [("k", "1"), ("k", "2")]])
def test_every_bound_is_held(pairs: list[tuple[str, str]]) -> None:
    with pytest.raises(SchedulerError) as refused:
        checked_tags(pairs)
    assert refused.value.code == "INVALID_ARGUMENT"


def test_the_largest_allowed_tags_pass() -> None:
    pairs = [(f"{i:0>32}", "~" * 64) for i in range(MAX_TAGS)]
    assert len(checked_tags(pairs)) == MAX_TAGS


def test_a_filter_is_one_checked_pair() -> None:
    assert parse_tag_filter("team=optics") == ("team", "optics")
    with pytest.raises(SchedulerError):
        parse_tag_filter("team")
