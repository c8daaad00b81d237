"""A deterministic synthetic seq2seq task: dates written in many styles -> ISO 8601.

The demo checkpoint is trained on it. Generalization is real: a fixed tenth of all
calendar dates (chosen by a hash of the date, not by position) never appears in
training, and the held-out eval set is drawn only from those dates, in every style.

Conventions that make the task well-defined (a human would need them too):
- slashes are US order (month/day/year), dots and dashes-with-digits are day-first;
- two-digit years: 50-99 -> 19xx, 00-49 -> 20xx; dates span 1950-2049.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import random
from collections.abc import Callable, Iterator

MONTHS = ["january", "february", "march", "april", "may", "june", "july",
          "august", "september", "october", "november", "december"]
WEEKDAYS = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]
_ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
         "ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen",
         "seventeen", "eighteen", "nineteen"]
_TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
_ORD_ONES = {"one": "first", "two": "second", "three": "third", "five": "fifth",
             "eight": "eighth", "nine": "ninth", "twelve": "twelfth"}

FIRST_YEAR, LAST_YEAR = 1950, 2049


def _words(n: int) -> str:
    """0..99 in words: 21 -> 'twenty-one'."""
    if n < 20:
        return _ONES[n]
    tens, ones = divmod(n, 10)
    return _TENS[tens] + ("" if ones == 0 else "-" + _ONES[ones])


def _ordinal_words(n: int) -> str:
    """1..31 as an ordinal in words: 21 -> 'twenty-first'."""
    w = _words(n)
    head, _, last = w.rpartition("-")
    if last in _ORD_ONES:
        last = _ORD_ONES[last]
    elif last.endswith("y"):
        last = last[:-1] + "ieth"
    else:
        last = last + "th"
    return (head + "-" if head else "") + last


def _ordinal_suffix(n: int) -> str:
    if 10 <= n % 100 <= 20:
        return f"{n}th"
    return f"{n}" + {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")


def _year_words(y: int, rng: random.Random) -> str:
    """1984 -> 'nineteen eighty-four'; 2005 -> 'two thousand five' or '... and five'."""
    hi, lo = divmod(y, 100)
    if y >= 2000 and (lo < 10 or rng.random() < 0.5):
        tail = "" if lo == 0 else (" and " if rng.random() < 0.5 else " ") + _words(lo)
        return "two thousand" + tail
    if lo == 0:
        return _words(hi) + " hundred"
    if lo < 10:
        return _words(hi) + " oh " + _ONES[lo]
    return _words(hi) + " " + _words(lo)


def _mon(d: _dt.date) -> str:
    return MONTHS[d.month - 1]


# Each style turns a date into text; `rng` picks small variations within a style.
Style = Callable[[_dt.date, random.Random], str]
STYLES: dict[str, Style] = {
    "us_numeric": lambda d, r: f"{d.month}/{d.day}/{d.year}",
    "us_padded_2y": lambda d, r: f"{d.month:02d}/{d.day:02d}/{d.year % 100:02d}",
    "eu_dots": lambda d, r: f"{d.day}.{d.month}.{d.year}",
    "eu_dots_padded": lambda d, r: f"{d.day:02d}.{d.month:02d}.{d.year}",
    "month_day_year": lambda d, r: f"{_mon(d)} {d.day} {d.year}",
    "month_day_comma": lambda d, r: f"{_mon(d)} {d.day}, {d.year}",
    "day_month_year": lambda d, r: f"{d.day} {_mon(d)} {d.year}",
    "the_nth_of": lambda d, r: f"the {_ordinal_suffix(d.day)} of {_mon(d)}, {d.year}",
    "abbr_ordinal": lambda d, r: f"{_mon(d)[:3]} {_ordinal_suffix(d.day)}, {d.year}",
    "dash_abbr": lambda d, r: f"{d.day:02d}-{_mon(d)[:3]}-{d.year}",
    "weekday_long": lambda d, r: f"{WEEKDAYS[d.weekday()]}, {_mon(d)} {d.day}, {d.year}",
    "weekday_short_2y": lambda d, r: (f"{WEEKDAYS[d.weekday()][:3]} {d.day} {_mon(d)[:3]} "
                                      f"'{d.year % 100:02d}"),
    "iso_dots": lambda d, r: f"{d.year}.{d.month:02d}.{d.day:02d}",
    "compact": lambda d, r: f"{d.year}{d.month:02d}{d.day:02d}",
    "ordinal_words": lambda d, r: f"the {_ordinal_words(d.day)} of {_mon(d)} {d.year}",
    "year_in_words": lambda d, r: f"{_mon(d)} {_ordinal_words(d.day)}, {_year_words(d.year, r)}",
}


def _case(text: str, rng: random.Random) -> str:
    """Mixed case as people type it; the tokenizer lower-cases, so this tests it."""
    p = rng.random()
    if p < 0.6:
        return text
    if p < 0.85:
        return " ".join(w[:1].upper() + w[1:] for w in text.split(" "))
    return text.upper()


def is_held_out(d: _dt.date) -> bool:
    """One date in ten, fixed by a hash of the date, is never used for training."""
    return hashlib.sha256(d.isoformat().encode()).digest()[0] % 10 == 0


def _all_dates() -> list[_dt.date]:
    start, end = _dt.date(FIRST_YEAR, 1, 1), _dt.date(LAST_YEAR, 12, 31)
    return [start + _dt.timedelta(days=i) for i in range((end - start).days + 1)]


def render(d: _dt.date, style: str, rng: random.Random) -> str:
    return _case(STYLES[style](d, rng), rng)


def stream(seed: int, held_out: bool) -> Iterator[tuple[str, str]]:
    """Endless (input, target) pairs from training dates (or held-out dates)."""
    rng = random.Random(seed)
    dates = [d for d in _all_dates() if is_held_out(d) == held_out]
    names = sorted(STYLES)
    while True:
        d = rng.choice(dates)
        yield render(d, rng.choice(names), rng), d.isoformat()


def eval_set(n: int, seed: int = 1234) -> list[dict]:
    """`n` held-out examples, styles balanced round-robin."""
    rng = random.Random(seed)
    dates = [d for d in _all_dates() if is_held_out(d)]
    names = sorted(STYLES)
    out = []
    for i in range(n):
        d = rng.choice(dates)
        out.append({"input": render(d, names[i % len(names)], rng), "target": d.isoformat()})
    return out


# Every character the task can produce (after lower-casing), for the tokenizer.
ALPHABET = sorted(set("abcdefghijklmnopqrstuvwxyz0123456789 ,./-'"))
