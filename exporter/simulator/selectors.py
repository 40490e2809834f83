"""Label and field selectors, parsed and matched the way k8s.io/apimachinery does it.

`parse_label_selector` follows the lexer/parser of `labels.Parse` (equality, set-based, exists,
`!key`, `>`/`<`); `parse_field_selector` follows `fields.ParseSelector` (`=`, `==`, `!=`,
backslash escapes). Both raise `SelectorError` with the real library's wording; the server
turns it into a 400 BadRequest Status.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum, StrEnum


class SelectorError(ValueError):
    """The selector text cannot be parsed (or names an unusable key/value)."""


# ---- label selectors -------------------------------------------------------------------------


class Op(StrEnum):
    """A label requirement's operator, spelled as in the selector text."""

    EXISTS = "exists"
    DOES_NOT_EXIST = "!"
    EQUALS = "="
    DOUBLE_EQUALS = "=="
    NOT_EQUALS = "!="
    IN = "in"
    NOT_IN = "notin"
    GREATER_THAN = ">"
    LESS_THAN = "<"


class _Tok(Enum):
    ERROR = "error"
    EOS = "end of string"
    CLOSED_PAR = ")"
    COMMA = ","
    DOES_NOT_EXIST = "!"
    DOUBLE_EQUALS = "=="
    EQUALS = "="
    GREATER_THAN = ">"
    IDENTIFIER = "identifier"
    IN = "in"
    LESS_THAN = "<"
    NOT_EQUALS = "!="
    NOT_IN = "notin"
    OPEN_PAR = "("


_STRING_TO_TOKEN = {
    ")": _Tok.CLOSED_PAR,
    ",": _Tok.COMMA,
    "!": _Tok.DOES_NOT_EXIST,
    "==": _Tok.DOUBLE_EQUALS,
    "=": _Tok.EQUALS,
    ">": _Tok.GREATER_THAN,
    "in": _Tok.IN,
    "<": _Tok.LESS_THAN,
    "!=": _Tok.NOT_EQUALS,
    "notin": _Tok.NOT_IN,
    "(": _Tok.OPEN_PAR,
}
_SPECIAL = frozenset("=!(),><")
_OPERATOR_TOKENS = {
    _Tok.DOUBLE_EQUALS: Op.DOUBLE_EQUALS,
    _Tok.EQUALS: Op.EQUALS,
    _Tok.GREATER_THAN: Op.GREATER_THAN,
    _Tok.IN: Op.IN,
    _Tok.LESS_THAN: Op.LESS_THAN,
    _Tok.NOT_EQUALS: Op.NOT_EQUALS,
    _Tok.NOT_IN: Op.NOT_IN,
}

_NAME = r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"
_NAME_RE = re.compile(rf"^{_NAME}$")
_DNS1123_SUBDOMAIN_RE = re.compile(
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
)


def _lex(text: str) -> list[tuple[_Tok, str]]:
    """Tokens of a label selector, as `labels.Lexer` produces them."""
    tokens: list[tuple[_Tok, str]] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch.isspace():
            i += 1
        elif ch in _SPECIAL:
            # The longest run of special characters that is a known token.
            buffer, last = "", ""
            while i < n and text[i] in _SPECIAL:
                if buffer + text[i] in _STRING_TO_TOKEN:
                    buffer += text[i]
                    last = buffer
                    i += 1
                elif last:
                    break
                else:
                    buffer += text[i]
                    i += 1
            if not last:
                tokens.append((_Tok.ERROR, f"error expected: keyword found '{buffer}'"))
                return tokens
            tokens.append((_STRING_TO_TOKEN[last], last))
        else:
            start = i
            while i < n and not text[i].isspace() and text[i] not in _SPECIAL:
                i += 1
            word = text[start:i]
            tokens.append((_STRING_TO_TOKEN.get(word, _Tok.IDENTIFIER), word))
    tokens.append((_Tok.EOS, ""))
    return tokens


def _validate_key(key: str) -> None:
    prefix, slash, name = key.rpartition("/")
    problems: list[str] = []
    if slash and not prefix:
        problems.append("prefix part must be non-empty")
    elif prefix and (len(prefix) > 253 or not _DNS1123_SUBDOMAIN_RE.match(prefix)):
        problems.append("prefix part must be a lowercase RFC 1123 subdomain")
    if not name:
        problems.append("name part must be non-empty")
    elif len(name) > 63:
        problems.append("name part must be no more than 63 characters")
    elif not _NAME_RE.match(name):
        problems.append(
            "name part must consist of alphanumeric characters, '-', '_' or '.', and must "
            "start and end with an alphanumeric character"
        )
    if problems:
        raise SelectorError(f'key: Invalid value: "{key}": {"; ".join(problems)}')


def _validate_value(value: str, index: int) -> None:
    if value and (len(value) > 63 or not _NAME_RE.match(value)):
        raise SelectorError(
            f'values[{index}][{value}]: Invalid value: "{value}": a valid label must be an empty '
            "string or consist of alphanumeric characters, '-', '_' or '.', and must start and "
            "end with an alphanumeric character"
        )


@dataclass(frozen=True)
class LabelRequirement:
    key: str
    op: Op
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        if self.op is Op.EXISTS:
            return present
        if self.op is Op.DOES_NOT_EXIST:
            return not present
        value = labels.get(self.key)
        if self.op in (Op.EQUALS, Op.DOUBLE_EQUALS, Op.IN):
            return present and value in self.values
        if self.op in (Op.NOT_EQUALS, Op.NOT_IN):
            return not present or value not in self.values
        # > and <: both sides are integers, an unparsable label value never matches.
        try:
            have = int(str(value))
        except ValueError:
            return False
        want = int(self.values[0])
        return have > want if self.op is Op.GREATER_THAN else have < want


def _requirement(key: str, op: Op, values: list[str]) -> LabelRequirement:
    """`labels.NewRequirement`: the operator's arity and the key and values are validated."""
    _validate_key(key)
    if op in (Op.IN, Op.NOT_IN) and not values:
        raise SelectorError("for 'in', 'notin' operators, values set can't be empty")
    if op in (Op.EQUALS, Op.DOUBLE_EQUALS, Op.NOT_EQUALS) and len(values) != 1:
        raise SelectorError("exact-match compatibility requires one single value")
    if op in (Op.EXISTS, Op.DOES_NOT_EXIST) and values:
        raise SelectorError("values set must be empty for exists and does not exist")
    if op in (Op.GREATER_THAN, Op.LESS_THAN):
        if len(values) != 1:
            raise SelectorError("for 'Gt', 'Lt' operators, exactly one value is required")
        try:
            int(values[0])
        except ValueError:
            raise SelectorError("for 'Gt', 'Lt' operators, the value must be an integer") from None
    for index, value in enumerate(values):
        _validate_value(value, index)
    # A set's order does not matter; a sorted tuple makes equal selectors compare equal.
    return LabelRequirement(key, op, tuple(sorted(set(values))))


class _LabelParser:
    def __init__(self, text: str) -> None:
        self.tokens = _lex(text)
        self.pos = 0

    def _lookahead(self, values_context: bool) -> tuple[_Tok, str]:
        tok, lit = self.tokens[self.pos]
        if values_context and tok in (_Tok.IN, _Tok.NOT_IN):
            tok = _Tok.IDENTIFIER  # `in`/`notin` are plain words where a value is expected
        return tok, lit

    def _consume(self, values_context: bool) -> tuple[_Tok, str]:
        tok, lit = self._lookahead(values_context)
        if tok is _Tok.ERROR:
            raise SelectorError(lit)
        if tok is not _Tok.EOS:
            self.pos += 1
        return tok, lit

    def parse(self) -> list[LabelRequirement]:
        requirements: list[LabelRequirement] = []
        while True:
            tok, lit = self._lookahead(values_context=True)
            if tok in (_Tok.IDENTIFIER, _Tok.DOES_NOT_EXIST):
                requirements.append(self._requirement())
                tok, lit = self._consume(values_context=True)
                if tok is _Tok.EOS:
                    return requirements
                if tok is _Tok.COMMA:
                    tok2, lit2 = self._lookahead(values_context=True)
                    if tok2 not in (_Tok.IDENTIFIER, _Tok.DOES_NOT_EXIST):
                        raise SelectorError(f"found '{lit2}', expected: identifier after ','")
                    continue
                raise SelectorError(f"found '{lit}', expected: ',' or 'end of string'")
            if tok is _Tok.EOS:
                return requirements
            if tok is _Tok.ERROR:
                raise SelectorError(lit)
            raise SelectorError(f"found '{lit}', expected: !, identifier, or 'end of string'")

    def _requirement(self) -> LabelRequirement:
        tok, lit = self._consume(values_context=True)
        negated = tok is _Tok.DOES_NOT_EXIST
        if negated:
            tok, lit = self._consume(values_context=True)
        if tok is not _Tok.IDENTIFIER:
            raise SelectorError(f"found '{lit}', expected: identifier")
        key = lit
        try:
            _validate_key(key)
        except SelectorError as exc:
            raise SelectorError(f"unable to parse requirement: {exc}") from None
        nxt, _ = self._lookahead(values_context=True)
        if negated or nxt in (_Tok.EOS, _Tok.COMMA):
            if negated:
                return _requirement(key, Op.DOES_NOT_EXIST, [])
            return _requirement(key, Op.EXISTS, [])
        tok, lit = self._consume(values_context=False)
        op = _OPERATOR_TOKENS.get(tok)
        if op is None:
            raise SelectorError(
                f"found '{lit}', expected: {', '.join(o.value for o in _OPERATOR_TOKENS.values())}"
            )
        values = self._set_values() if op in (Op.IN, Op.NOT_IN) else [self._exact_value()]
        try:
            return _requirement(key, op, values)
        except SelectorError as exc:
            raise SelectorError(f"unable to parse requirement: {exc}") from None

    def _exact_value(self) -> str:
        tok, _ = self._lookahead(values_context=True)
        if tok in (_Tok.EOS, _Tok.COMMA):
            return ""  # `key=` selects the empty value
        tok, lit = self._consume(values_context=True)
        if tok is _Tok.IDENTIFIER:
            return lit
        raise SelectorError(f"found '{lit}', expected: identifier")

    def _set_values(self) -> list[str]:
        tok, lit = self._consume(values_context=True)
        if tok is not _Tok.OPEN_PAR:
            raise SelectorError(f"found '{lit}' expected: '('")
        tok, lit = self._lookahead(values_context=True)
        if tok is _Tok.CLOSED_PAR:
            self._consume(values_context=True)
            return []
        if tok not in (_Tok.IDENTIFIER, _Tok.COMMA):
            raise SelectorError(f"found '{lit}', expected: ',', ')' or identifier")
        values: list[str] = []
        after_comma = True  # `(,a)` and `(a,)` carry an empty value, as in the real parser
        while True:
            tok, lit = self._consume(values_context=True)
            if tok is _Tok.IDENTIFIER:
                values.append(lit)
                after_comma = False
                nxt, nlit = self._lookahead(values_context=True)
                if nxt is _Tok.CLOSED_PAR:
                    self._consume(values_context=True)
                    return values
                if nxt is not _Tok.COMMA:
                    raise SelectorError(f"found '{nlit}', expected: ',' or ')'")
            elif tok is _Tok.COMMA:
                if after_comma:
                    values.append("")
                after_comma = True
                nxt, _ = self._lookahead(values_context=True)
                if nxt is _Tok.CLOSED_PAR:
                    self._consume(values_context=True)
                    values.append("")
                    return values
            else:
                raise SelectorError(f"found '{lit}', expected: ',' or ')'")


@dataclass(frozen=True)
class LabelSelector:
    """All requirements must hold; the empty selector matches everything."""

    requirements: tuple[LabelRequirement, ...] = ()

    def matches(self, labels: Mapping[str, str] | None) -> bool:
        labels = labels or {}
        return all(r.matches(labels) for r in self.requirements)

    @property
    def empty(self) -> bool:
        return not self.requirements


def parse_label_selector(text: str) -> LabelSelector:
    """Parse a `labelSelector` query value; raises `SelectorError` on bad syntax or values."""
    return LabelSelector(tuple(_LabelParser(text).parse()))


# ---- field selectors -------------------------------------------------------------------------

_TERM_OPERATORS = ("!=", "==", "=")


@dataclass(frozen=True)
class FieldRequirement:
    field: str
    op: str  # "=" (also for "==") or "!="
    value: str

    def matches(self, fields: Mapping[str, str]) -> bool:
        have = fields.get(self.field, "")
        return have == self.value if self.op == "=" else have != self.value


@dataclass(frozen=True)
class FieldSelector:
    requirements: tuple[FieldRequirement, ...] = ()

    def matches(self, fields: Mapping[str, str]) -> bool:
        return all(r.matches(fields) for r in self.requirements)

    @property
    def fields(self) -> frozenset[str]:
        return frozenset(r.field for r in self.requirements)

    @property
    def empty(self) -> bool:
        return not self.requirements


def _split_terms(text: str) -> list[str]:
    """Split on commas that are not escaped with a backslash."""
    terms: list[str] = []
    start, i = 0, 0
    while i < len(text):
        if text[i] == "\\":
            i += 2
            continue
        if text[i] == ",":
            terms.append(text[start:i])
            start = i + 1
        i += 1
    terms.append(text[start:])
    return terms


def _split_term(term: str) -> tuple[str, str, str] | None:
    for i in range(len(term)):
        for op in _TERM_OPERATORS:
            if term.startswith(op, i):
                return term[:i], op, term[i + len(op) :]
    return None


def _unescape(value: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(value):
        ch = value[i]
        if ch == "\\":
            if i + 1 >= len(value) or value[i + 1] not in "\\,=":
                raise SelectorError(f"invalid field selector: invalid escape sequence: {value}")
            out.append(value[i + 1])
            i += 2
            continue
        if ch in ",=":
            raise SelectorError(f"invalid field selector: unescaped {ch!r} in value: {value}")
        out.append(ch)
        i += 1
    return "".join(out)


def parse_field_selector(text: str) -> FieldSelector:
    """Parse a `fieldSelector` query value; whether each field is supported is the caller's
    check (it depends on the resource)."""
    requirements: list[FieldRequirement] = []
    for term in sorted(_split_terms(text)):
        if not term:
            continue
        split = _split_term(term)
        if split is None:
            raise SelectorError(f"invalid selector: '{text}'; can't understand '{term}'")
        lhs, op, rhs = split
        requirements.append(FieldRequirement(lhs, "!=" if op == "!=" else "=", _unescape(rhs)))
    return FieldSelector(tuple(requirements))
