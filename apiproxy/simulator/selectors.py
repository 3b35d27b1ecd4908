"""Label and field selectors, parsed and matched as k8s.io/apimachinery does. Pure functions.

Parsing happens once per request; matching runs per object (LIST) or per event and watcher (WATCH), so a
compiled selector is a tuple of small requirement objects with a cheap ``matches``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?"
_NAME_RE = re.compile(rf"^{_NAME}$")
_DNS1123_SUBDOMAIN_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")

OPERATORS = ("exists", "!", "=", "==", "!=", "in", "notin", "gt", "lt")


class SelectorError(ValueError):
    """A selector the apiserver would refuse with 400 BadRequest."""


def validate_label_key(key: str) -> None:
    prefix, _, name = key.rpartition("/")
    if "/" in key and (not prefix or len(prefix) > 253 or not _DNS1123_SUBDOMAIN_RE.match(prefix)):
        raise SelectorError(f"invalid label key {key!r}: prefix part must be a DNS-1123 subdomain")
    if not name or len(name) > 63 or not _NAME_RE.match(name):
        raise SelectorError(
            f"invalid label key {key!r}: name part must consist of alphanumeric characters, '-', '_' or '.', "
            "and must start and end with an alphanumeric character"
        )


def validate_label_value(value: str) -> None:
    if value and (len(value) > 63 or not _NAME_RE.match(value)):
        raise SelectorError(
            f"invalid label value: {value!r}: a valid label must be an empty string or consist of "
            "alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"
        )


@dataclass(frozen=True, slots=True)
class Requirement:
    """One ``key op values`` clause. ``op`` is one of :data:`OPERATORS` (``=`` and ``==`` normalised)."""

    key: str
    op: str
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        op = self.op
        if op == "exists":
            return self.key in labels
        if op == "!":
            return self.key not in labels
        value = labels.get(self.key)
        if op == "=":
            return value == self.values[0]
        if op == "!=":
            return value != self.values[0]
        if op == "in":
            return value is not None and value in self.values
        if op == "notin":
            return value is None or value not in self.values
        if value is None:
            return False
        try:
            have, want = int(value), int(self.values[0])
        except ValueError:
            return False
        return have > want if op == "gt" else have < want

    def __str__(self) -> str:
        if self.op == "exists":
            return self.key
        if self.op == "!":
            return f"!{self.key}"
        if self.op in ("in", "notin"):
            return f"{self.key} {self.op} ({','.join(self.values)})"
        sym = {"gt": ">", "lt": "<"}.get(self.op, self.op)
        return f"{self.key}{sym}{self.values[0]}"


@dataclass(frozen=True, slots=True)
class LabelSelector:
    requirements: tuple[Requirement, ...]

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(r.matches(labels) for r in self.requirements)

    def __bool__(self) -> bool:
        return bool(self.requirements)

    def __str__(self) -> str:
        return ",".join(str(r) for r in self.requirements)


_TOKEN_RE = re.compile(r"\s*(!=|==|=|!|\(|\)|,|>|<|[^\s!=(),<>]+)")


def _tokens(text: str) -> list[str]:
    tokens: list[str] = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN_RE.match(text, pos)
        if m is None:  # pragma: no cover - the pattern accepts every non-space character
            raise SelectorError(f"unable to parse requirement: unexpected character at {pos}")
        tokens.append(m.group(1))
        pos = m.end()
    return tokens


def parse_label_selector(text: str) -> LabelSelector:
    """Parse the ``labelSelector`` query parameter (equality- and set-based grammar)."""
    tokens = _tokens(text)
    reqs: list[Requirement] = []
    i = 0

    def at(j: int) -> str | None:
        return tokens[j] if j < len(tokens) else None

    while i < len(tokens):
        tok = tokens[i]
        if tok == "!":
            key = at(i + 1)
            if key is None or key in "!=(),<>":
                raise SelectorError(f"unable to parse requirement: missing key after '!' in {text!r}")
            validate_label_key(key)
            reqs.append(Requirement(key, "!"))
            i += 2
        else:
            key = tok
            if key in ("=", "==", "!=", "(", ")", ",", ">", "<"):
                raise SelectorError(f"unable to parse requirement: found {key!r}, expected: identifier")
            validate_label_key(key)
            op = at(i + 1)
            if op is None or op == ",":
                reqs.append(Requirement(key, "exists"))
                i += 1
            elif op in ("=", "==", "!=", ">", "<"):
                value = at(i + 2)
                if value is None or value == ",":
                    value = ""
                    i += 2
                elif value in ("(", ")", "=", "==", "!=", "!", ">", "<"):
                    raise SelectorError(f"unable to parse requirement: found {value!r}, expected: identifier")
                else:
                    i += 3
                if op in (">", "<"):
                    try:
                        int(value)
                    except ValueError:
                        raise SelectorError(
                            f"unable to parse requirement: for 'gt', 'lt' operators, the value must be an "
                            f"integer: {value!r}"
                        ) from None
                else:
                    validate_label_value(value)
                norm = {"==": "=", ">": "gt", "<": "lt"}.get(op, op)
                reqs.append(Requirement(key, norm, (value,)))
            elif op in ("in", "notin"):
                if at(i + 2) != "(":
                    raise SelectorError(f"unable to parse requirement: found {at(i + 2)!r}, expected: '('")
                j = i + 3
                values: list[str] = []
                expect_value = True
                while True:
                    t = at(j)
                    if t is None:
                        raise SelectorError("unable to parse requirement: found end of string, expected: ')'")
                    if t == ")":
                        if expect_value and values:
                            values.append("")
                        break
                    if t == ",":
                        if expect_value:
                            values.append("")
                        expect_value = True
                    elif expect_value:
                        validate_label_value(t)
                        values.append(t)
                        expect_value = False
                    else:
                        raise SelectorError(f"unable to parse requirement: found {t!r}, expected: ',' or ')'")
                    j += 1
                if not values:
                    values = [""]
                reqs.append(Requirement(key, op, tuple(sorted(set(values)))))
                i = j + 1
            else:
                raise SelectorError(
                    f"unable to parse requirement: found {op!r}, expected: in, notin, =, ==, !=, gt, lt"
                )
        if i < len(tokens):
            if tokens[i] != ",":
                raise SelectorError(f"unable to parse requirement: found {tokens[i]!r}, expected: ','")
            i += 1
            if i == len(tokens):
                raise SelectorError("unable to parse requirement: found end of string, expected: identifier")
    return LabelSelector(tuple(reqs))


@dataclass(frozen=True, slots=True)
class FieldRequirement:
    field: str
    value: str
    negate: bool

    def matches(self, fields: Mapping[str, str]) -> bool:
        return (fields.get(self.field, "") == self.value) != self.negate

    def __str__(self) -> str:
        escaped = self.value.replace("\\", "\\\\").replace(",", "\\,").replace("=", "\\=")
        return f"{self.field}{'!=' if self.negate else '='}{escaped}"


@dataclass(frozen=True, slots=True)
class FieldSelector:
    requirements: tuple[FieldRequirement, ...]

    def matches(self, fields: Mapping[str, str]) -> bool:
        return all(r.matches(fields) for r in self.requirements)

    def __bool__(self) -> bool:
        return bool(self.requirements)

    def __str__(self) -> str:
        return ",".join(str(r) for r in self.requirements)

    def exact_name(self) -> str | None:
        """The object a ``metadata.name=X`` selector pins (kube then treats list/watch as naming X)."""
        for r in self.requirements:
            if r.field == "metadata.name" and not r.negate:
                return r.value
        return None


def _split_unescaped(text: str, sep: str) -> list[str]:
    parts: list[str] = []
    cur: list[str] = []
    escaped = False
    for ch in text:
        if escaped:
            cur.append("\\" + ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == sep:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    if escaped:
        raise SelectorError(f"invalid field selector: {text!r}: trailing backslash")
    parts.append("".join(cur))
    return parts


def _unescape(value: str) -> str:
    out: list[str] = []
    it = iter(value)
    for ch in it:
        if ch == "\\":
            nxt = next(it, "")
            if nxt not in ("\\", ",", "="):
                raise SelectorError(f"invalid field selector value {value!r}: invalid escape sequence")
            out.append(nxt)
        else:
            out.append(ch)
    return "".join(out)


def parse_field_selector(text: str, allowed: frozenset[str] | None = None) -> FieldSelector:
    """Parse ``fieldSelector``; ``allowed`` is the resource's field label set (unknown → SelectorError
    ``field label not supported: X``, which the caller wraps in kube's message)."""
    reqs: list[FieldRequirement] = []
    if not text.strip():
        return FieldSelector(())
    for part in _split_unescaped(text, ","):
        if not part:
            continue
        found = next(
            ((op, idx) for op in ("!=", "==", "=") if (idx := _find_unescaped(part, op)) >= 0),
            None,
        )
        if found is None:
            raise SelectorError(f"invalid selector: '{part}'; can't understand '{part}'")
        op, idx = found
        negate = op == "!="
        field_name = part[:idx].strip()
        value = _unescape(part[idx + len(op) :])
        if allowed is not None and field_name not in allowed:
            raise SelectorError(f"field label not supported: {field_name}")
        reqs.append(FieldRequirement(field_name, value, negate))
    return FieldSelector(tuple(reqs))


def _find_unescaped(text: str, op: str) -> int:
    i = 0
    while i < len(text):
        if text[i] == "\\":
            i += 2
            continue
        if text.startswith(op, i):
            return i
        i += 1
    return -1
