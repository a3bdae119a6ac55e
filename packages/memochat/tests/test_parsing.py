"""The tolerant readers: memo items, retrieval picks, ratings, answers."""

from __future__ import annotations

import json

from memochat.parsing import MemoItem, normalize_answer, parse_memos, parse_picks, parse_rating


def test_memos_from_valid_json() -> None:
    text = 'Sure: [{"topic": "travel", "summary": "going to Lisbon", "start": 1, "end": 4}, {"topic": "food", "summary": "vegetarian", "start": 5, "end": 8}]'
    assert parse_memos(text, 8) == [MemoItem("travel", "going to Lisbon", 1, 4), MemoItem("food", "vegetarian", 5, 8)]


def test_memos_from_broken_json_walks_the_tokens() -> None:
    # unbalanced brackets, single quotes, a trailing comma: not JSON, still the official token sequence
    text = "[{'topic': 'travel plans', 'summary': 'Lisbon in May', 'start': 1, 'end': 4}, {'topic': 'budget', 'summary': '900 euros', 'start': 5, 'end': 8},"
    assert parse_memos(text, 8) == [MemoItem("travel plans", "Lisbon in May", 1, 4), MemoItem("budget", "900 euros", 5, 8)]


def test_memos_without_summary_as_in_topiocqa() -> None:
    text = '[{"topic": "sports", "start": 1, "end": 2}, {"topic": "music", "start": 3, "end": 6}]'
    assert parse_memos(text, 6) == [MemoItem("sports", "", 1, 2), MemoItem("music", "", 3, 6)]


def test_memo_spans_are_clipped_ordered_and_dropped_outside() -> None:
    items = [{"topic": "a", "summary": "s", "start": 0, "end": 3}, {"topic": "b", "summary": "s", "start": 9, "end": 5},
             {"topic": "c", "summary": "s", "start": 20, "end": 30}, {"topic": "", "summary": "s", "start": 1, "end": 2},
             {"topic": "d", "summary": "s", "start": "x", "end": 2}]  # fmt: skip
    assert parse_memos(json.dumps(items), 8) == [MemoItem("a", "s", 1, 3), MemoItem("b", "s", 5, 8)]


def test_memos_never_raise() -> None:
    for text in ("", "no memos here", "[", "[1, 2, 3]", '{"topic": 1}', "topic start end", None):
        assert parse_memos(text, 5) == []  # type: ignore[arg-type]
    assert parse_memos('[{"topic": "a", "summary": "", "start": 1, "end": 2}]', 0) == []


def test_picks_official_format_and_tolerance() -> None:
    assert parse_picks("2#3", 4, exclude=(0,)) == [1, 2]
    assert parse_picks(" 3 # 3 #2\n", 4) == [2, 1]  # repeats dropped, order kept
    assert parse_picks("1", 4, exclude=(0,)) == []  # the sentinel
    assert parse_picks("0", 4) == []  # the official code read 0 as the last option
    assert parse_picks("7#2", 4) == [1]  # out of range dropped
    assert parse_picks("", 4) == [] and parse_picks("none of them", 4) == []
    assert parse_picks("Options 2 and 4 fit.", 4, exclude=(0,)) == [1, 3]  # no '#' numbers: any integer
    assert parse_picks("2#x", 4) == [1]


def test_rating_parser() -> None:
    assert parse_rating("Consistent. Rating: [[72]]") == 72
    assert parse_rating("[[ 7.6 ]]") == 8
    assert parse_rating("Rating: 72") is None  # missing brackets: counted as missing, not as zero
    assert parse_rating("[[0]]") is None and parse_rating("[[150]]") is None
    assert parse_rating("[[12]] then [[99]]") == 12


def test_normalize_answer_keeps_lines() -> None:
    assert normalize_answer("  hello   there \n  second    line  ") == "hello there\nsecond line"
    assert normalize_answer("") == ""


def test_negative_picks_are_dropped_not_read_as_positive() -> None:
    # "-2" is not option 2: the sign is kept whether the split or the any-integer fallback reads it
    assert parse_picks("-2", 4, exclude=(0,)) == []
    assert parse_picks("-1#-2", 4, exclude=(0,)) == []
    assert parse_picks("options -2 and -3", 4, exclude=(0,)) == []
    assert parse_picks("options 2-3", 4, exclude=(0,)) == [1, 2]  # a range's dash is not a sign


def test_memo_text_keeps_apostrophes_and_quotes() -> None:
    text = json.dumps([{"topic": "Ana's trip", "summary": 'the "big" plan,  in  May', "start": 1, "end": 2}])
    assert parse_memos(text, 2) == [MemoItem("Ana's trip", 'the "big" plan, in May', 1, 2)]
    broken = "[{'topic': 'trip', 'summary': \"Ana's plan\", 'start': 1, 'end': 2},"  # the token walk keeps them too
    assert parse_memos(broken, 2) == [MemoItem("trip", "Ana's plan", 1, 2)]


def test_an_empty_list_before_the_answer_does_not_hide_it() -> None:
    text = 'Lines [] are chit-chat. [{"topic": "travel", "summary": "Lisbon", "start": 1, "end": 2}]'
    assert parse_memos(text, 2) == [MemoItem("travel", "Lisbon", 1, 2)]
