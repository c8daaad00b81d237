"""One strict loader for edgeseq's declarative data: recipes, targets, build matrices and
artifact manifests are frozen dataclasses, and `load(cls, data, where)` checks a parsed YAML
or JSON value against the class's type hints, then builds it.

What the hints mean:
  int, float, str, bool     that JSON/YAML type (true is not an integer; an integer is a
                            number; numbers must be finite)
  X | None                  null is allowed
  list[X], tuple[X, ...]    a list (a tuple field gets a tuple)
  dict[str, X]              a mapping with string keys, each value an X
  a dataclass               a mapping: unknown keys are refused by name (unless the class has a
                            `Rest` field, which keeps them), required keys must be there
  Any                       anything
`Annotated[T, ...]` adds rules (Range, OneOf, AtLeast, AtMost, Pattern, NonEmpty, Keys, KeyRule,
Newer) and wording (Phrase, Says); a class may define `validate(self, where)` for rules across
its fields, run once they are loaded.

Every refusal is one line naming the file (`where`) and the key. A class with a `KIND`
(recipe, target, tolerance, matrix) words it like a spec, "{where}: recipe key 'max_input_len'
must be an integer, got 'x'"; its nested classes without one report dotted keys under it
("matrix key 'thresholds.x'"). Without any KIND (the manifest) a key is its path from the top:
"{where}: 'tokens.eos_token_id' must be an integer". A list is reported as a whole (its key, its
wording, the whole value) unless its items are dataclasses, which are reported item by item.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Annotated, Any, NoReturn, TypeVar, Union, get_args, get_origin, get_type_hints

from .errors import InputError

T = TypeVar("T")


def short(value: Any, limit: int = 60) -> str:
    """repr() for error messages: one line, bounded (a fuzzed value can be huge)."""
    r = repr(value)
    return r if len(r) <= limit else r[: limit - 3] + "..."


def check_keys(data: dict, allowed: Sequence[str], where: str, kind: str) -> None:
    """Unknown keys (of any YAML type: 1, null, true are keys too) -> one line naming the first."""
    unknown = sorted((k for k in data if k not in allowed), key=repr)
    if unknown:
        raise InputError(f"{where}: unknown {kind} key {short(unknown[0])}; allowed: {', '.join(allowed)}")


def must(where: str, kind: str | None, key: str, said: str, value: Any) -> InputError:
    """The one-line refusal of a value, in the spec wording (with a kind) or the manifest's."""
    if kind:
        return InputError(f"{where}: {kind} key {key!r} must be {said}, got {short(value)}")
    return InputError(f"{where}: {key!r} must be {said}")


# -- annotations: wording -----------------------------------------------------------------------


@dataclass(frozen=True)
class Phrase:
    """What the value must be, in words, for every refusal of this node (its type and rules)."""

    text: str


@dataclass(frozen=True)
class Says:
    """The whole message (after "{where}: ") for any refusal inside this node; str.format fields:
    key (dotted path), name (the field), entry (the mapping key it is under), got."""

    text: str


@dataclass(frozen=True)
class Rest:
    """Marks a dataclass's `dict[str, Any]` field that keeps the keys its other fields do not
    name (a backend's own sections and per-program facts), instead of refusing them."""


@dataclass(frozen=True)
class AbsentIsNull:
    """An absent key reads as null, so it is refused with what it must be (not "missing")."""


# -- annotations: rules (None is the type's business, never a rule's) ----------------------------


@dataclass(frozen=True)
class Rule:
    """A condition on a loaded value: `test`, and what the value must be when it fails (`said`,
    or a function giving it), or instead a whole message (`says`, str.format fields as Says)."""

    test: Callable[[Any], bool]
    said: str | Callable[[], str] = ""
    says: str | None = None

    def words(self) -> str:
        return self.said() if callable(self.said) else self.said


# Rule makers, capitalized as they read in annotations: Annotated[int, Range(1, 8192)].
def Range(lo: int, hi: int) -> Rule:
    return Rule(lambda v: lo <= v <= hi, f"between {lo} and {hi}")


def AtLeast(lo: float) -> Rule:
    return Rule(lambda v: v >= lo, f">= {lo:g}")


def AtMost(hi: float) -> Rule:
    return Rule(lambda v: v <= hi, f"<= {hi:g}")


def OneOf(choices: Collection[Any] | Callable[[], Collection[Any]], says: str | None = None) -> Rule:
    """One of `choices` (or of what a function gives, asked when checking: a registry). `says`
    may name them as {choices} (fixed choices only)."""
    def names() -> list[Any]:
        return list(choices() if callable(choices) else choices)

    if says is not None:
        says = says.replace("{choices}", ", ".join(map(str, names())))
    return Rule(lambda v: v in names(), lambda: "one of " + ", ".join(map(str, names())), says)


def Pattern(regex: re.Pattern[str], said: str) -> Rule:
    return Rule(lambda v: regex.fullmatch(v) is not None, said)


def NonEmpty() -> Rule:
    return Rule(lambda v: len(v) > 0, "non-empty")


def NonBlank() -> Rule:
    return Rule(lambda v: bool(v.strip()), "not blank")


def Newer(current: int) -> Rule:
    """A format_version this tool can read; a newer one is refused with "upgrade edgeseq"."""
    return Rule(lambda v: v <= current, f"<= {current}",
                f"format_version {{got}} is newer than this tool ({current}); upgrade edgeseq")


@dataclass(frozen=True)
class Keys:
    """A mapping's keys come from `allowed`: "unknown {field} {noun} X; allowed: ..."."""

    allowed: Sequence[str]
    noun: str = "key"


@dataclass(frozen=True)
class KeyRule:
    """Every key of a mapping passes `ok`; `says` words a refusal ({entry}: the key)."""

    ok: Callable[[Any], bool]
    says: str


# -- the loader -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _At:
    where: str
    kind: str | None  # spec wording when set
    key: str  # dotted path, for messages
    name: str  # the field this is (or is under), for unknown-key messages
    entry: Any = None  # the mapping key this value is under

    def fail(self, said: str, value: Any, says: str | None = None) -> NoReturn:
        if says is not None:
            raise InputError(f"{self.where}: " + says.format(key=self.key, name=self.name, entry=self.entry,
                                                             got=short(value)))
        raise must(self.where, self.kind, self.key, said, value)

    def under(self, key: Any, name: str | None = None) -> _At:
        path = f"{self.key}.{key}" if self.key else str(key)
        return _At(self.where, self.kind, path, name or self.name, key)


def load(cls: type[T], data: Any, where: str, key: str = "") -> T:
    """`data` (parsed YAML/JSON) as a `cls`, or a one-line InputError naming `where` and the key
    (`key`: where `data` sits in its file, for a part loaded on its own: "input")."""
    kind = getattr(cls, "KIND", None)
    at = _At(where, None, key, kind or key)
    if not isinstance(data, dict):
        if kind:
            raise InputError(f"{where}: a {kind} must be a YAML mapping, got {type(data).__name__}")
        at.fail("a mapping", data)
    return _dataclass(cls, data, at)


@cache
def _hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls, include_extras=True)


def _split(tp: Any) -> tuple[Any, tuple[Any, ...]]:
    """Annotated[T, *meta] -> (T, meta); anything else -> (it, ())."""
    if get_origin(tp) is Annotated:
        base, *meta = get_args(tp)
        inner, more = _split(base)
        return inner, (*meta, *more)
    return tp, ()


def _phrase(tp: Any) -> str:
    tp, meta = _split(tp)
    said = next((m.text for m in meta if isinstance(m, Phrase)), None)
    if said:
        return said
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_phrase(a) for a in get_args(tp) if a is not type(None))
    if origin in (list, tuple):
        item = _split(get_args(tp)[0])[0]
        return {int: "a list of integers", str: "a list of strings"}.get(item, "a list")
    return {int: "an integer", float: "a number", str: "a string", bool: "true/false"}.get(tp, "a mapping")


def _value(tp: Any, value: Any, at: _At) -> Any:
    tp, meta = _split(tp)
    phrase = next((m.text for m in meta if isinstance(m, Phrase)), None)
    says = next((m.text for m in meta if isinstance(m, Says)), None)
    try:
        out = _typed(tp, value, at, phrase, meta)
        for rule in meta:
            if isinstance(rule, Rule) and out is not None and not rule.test(out):
                at.fail(phrase or rule.words(), out, rule.says)
    except InputError:
        if says is None:
            raise
        at.fail("", value, says)
    return out


def _typed(tp: Any, value: Any, at: _At, phrase: str | None, meta: tuple[Any, ...]) -> Any:
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        return _union(get_args(tp), value, at, phrase)
    if origin in (list, tuple):
        return _list(tp, value, at, phrase)
    if origin is dict or tp is dict:
        return _dict(tp, value, at, phrase, meta)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            at.fail(phrase or "a mapping", value)
        return _dataclass(tp, value, at)
    return _scalar(tp, value, at, phrase)


def _scalar(tp: type, value: Any, at: _At, phrase: str | None) -> Any:
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            at.fail(phrase or "a number", value)
        try:
            value = float(value)
        except OverflowError:  # an integer past float range
            value = math.inf
        if not math.isfinite(value):
            at.fail(phrase or "a finite number", value)
        return value
    ok = isinstance(value, tp) and (tp is bool or not isinstance(value, bool))
    if not ok:
        at.fail(phrase or _phrase(tp), value)
    return value


def _union(options: tuple[Any, ...], value: Any, at: _At, phrase: str | None) -> Any:
    if value is None and type(None) in options:
        return None
    kinds = [o for o in options if o is not type(None)]
    for option in kinds:
        try:
            return _value(option, value, at)
        except InputError:
            if len(kinds) == 1 and phrase is None:
                raise  # X | None: what X said
    at.fail(phrase or " or ".join(_phrase(o) for o in kinds), value)


def _list(tp: Any, value: Any, at: _At, phrase: str | None) -> Any:
    if not isinstance(value, list):
        at.fail(phrase or _phrase(tp), value)
    args = get_args(tp)
    item = args[0]
    by_item = phrase is None and dataclasses.is_dataclass(_split(item)[0])
    out = []
    for i, x in enumerate(value):
        if by_item:
            out.append(_value(item, x, _At(at.where, at.kind, f"{at.key}[{i}]", at.name, i)))
            continue
        try:
            out.append(_value(item, x, at))
        except InputError:
            at.fail(phrase or _phrase(tp), value)
    return tuple(out) if get_origin(tp) is tuple else out


def _dict(tp: Any, value: Any, at: _At, phrase: str | None, meta: tuple[Any, ...]) -> dict:
    if not isinstance(value, dict):
        at.fail(phrase or "a mapping", value)
    item = (get_args(tp) or (str, Any))[1]
    for m in meta:
        if isinstance(m, Keys):
            unknown = sorted((k for k in value if k not in m.allowed), key=repr)
            if unknown:
                raise InputError(f"{at.where}: unknown {at.name} {m.noun} {short(unknown[0])}; "
                                 f"allowed: {', '.join(m.allowed)}")
        if isinstance(m, KeyRule):
            for k in value:
                if not m.ok(k):
                    _At(at.where, at.kind, at.key, at.name, k).fail("", k, m.says)
    for k in value:
        if not isinstance(k, str):
            at.fail("a mapping with string keys", k)
    return {k: _value(item, v, at.under(k)) for k, v in value.items()}


def _dataclass(cls: Any, value: dict, at: _At) -> Any:
    kind = getattr(cls, "KIND", None)
    # A class with a KIND starts its own wording; one without reports dotted keys under its field.
    inner = _At(at.where, kind, "", kind) if kind else at
    hints = _hints(cls)
    fields = dataclasses.fields(cls)
    rest = next((f.name for f in fields if any(isinstance(m, Rest) for m in _split(hints[f.name])[1])), None)
    names = [f.name for f in fields if f.name != rest]
    if rest is None:
        check_keys(value, names, at.where, kind or at.name)
    out: dict[str, Any] = {}
    for f in fields:
        if f.name == rest:
            out[f.name] = {k: v for k, v in value.items() if k not in names}
            continue
        here = inner.under(f.name, f.name)
        if f.name not in value:
            if any(isinstance(m, AbsentIsNull) for m in _split(hints[f.name])[1]):
                out[f.name] = _value(hints[f.name], None, here)
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise InputError(f"{at.where}: missing required {inner.kind} key {f.name!r}" if inner.kind
                                 else f"{at.where}: missing key {here.key!r}")
            continue
        out[f.name] = _value(hints[f.name], value[f.name], here)
    obj = cls(**out)
    check = getattr(obj, "validate", None)
    if callable(check):
        check(at.where)
    return obj
