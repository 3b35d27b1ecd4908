"""Label and field selectors: the grammar kube accepts, the semantics it applies."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apiproxy.simulator.selectors import (
    LabelSelector,
    Requirement,
    SelectorError,
    parse_field_selector,
    parse_label_selector,
)

LABELS = {"app": "reviews", "version": "v2", "tier": "backend", "replicas": "3", "empty": ""}


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("", True),
        ("app=reviews", True),
        ("app==reviews", True),
        ("app = reviews", True),
        ("app!=reviews", False),
        ("app!=ratings", True),
        ("missing!=x", True),
        ("app=reviews,version=v1", False),
        ("app=reviews,version=v2", True),
        ("version in (v1,v2)", True),
        ("version in (v1, v3)", False),
        ("version notin (v1,v3)", True),
        ("missing notin (v1)", True),
        ("missing in (v1)", False),
        ("app", True),
        ("missing", False),
        ("!missing", True),
        ("!app", False),
        ("empty=", True),
        ("empty", True),
        ("replicas>2", True),
        ("replicas<2", False),
        ("app in (reviews),tier,!canary", True),
        ("example.com/team=x", False),
    ],
)
def test_label_selector_table(selector: str, expected: bool) -> None:
    assert parse_label_selector(selector).matches(LABELS) is expected


@pytest.mark.parametrize(
    "bad",
    ["app=", "=x", "app=a b", "app in v1", "app in (v1", "a,", ",a", "app!", "app=x=y", "-bad=1", "app>x"],
)
def test_label_selector_rejects(bad: str) -> None:
    if bad == "app=":  # an empty value is valid
        assert parse_label_selector(bad).requirements == (Requirement("app", "=", ("",)),)
        return
    with pytest.raises(SelectorError):
        parse_label_selector(bad)


@pytest.mark.parametrize(
    ("selector", "fields", "expected"),
    [
        ("metadata.name=a", {"metadata.name": "a"}, True),
        ("metadata.name==a", {"metadata.name": "a"}, True),
        ("metadata.name!=a", {"metadata.name": "a"}, False),
        ("status.phase!=Failed,spec.nodeName=n1", {"status.phase": "Running", "spec.nodeName": "n1"}, True),
        ("status.phase!=Failed", {"status.phase": "Failed"}, False),
        (r"metadata.name=a\,b", {"metadata.name": "a,b"}, True),
        ("spec.nodeName=", {"spec.nodeName": ""}, True),
    ],
)
def test_field_selector_table(selector: str, fields: dict[str, str], expected: bool) -> None:
    allowed = frozenset({"metadata.name", "status.phase", "spec.nodeName"})
    assert parse_field_selector(selector, allowed).matches(fields) is expected


def test_field_selector_unknown_field() -> None:
    with pytest.raises(SelectorError, match=r"field label not supported: spec\.foo"):
        parse_field_selector("spec.foo=bar", frozenset({"metadata.name"}))
    with pytest.raises(SelectorError):
        parse_field_selector("nonsense", None)


def test_exact_name() -> None:
    assert parse_field_selector("metadata.name=istio").exact_name() == "istio"
    assert parse_field_selector("metadata.name!=istio").exact_name() is None


# -- properties ---------------------------------------------------------------------------------------

_ALNUM = "abcxyz019"
names = st.builds(
    lambda first, mid, last: first + mid + last,
    st.sampled_from(_ALNUM),
    st.text(alphabet=_ALNUM + "-_.", max_size=5),
    st.sampled_from(_ALNUM),
) | st.sampled_from(_ALNUM)
prefixes = st.text(alphabet="abc019", min_size=1, max_size=6)
keys = st.one_of(names, st.builds(lambda p, n: f"{p}.io/{n}", prefixes, names))
label_maps = st.dictionaries(keys, st.one_of(st.just(""), names), max_size=5)


@st.composite
def requirements(draw: st.DrawFn) -> Requirement:
    key = draw(keys)
    op = draw(st.sampled_from(["exists", "!", "=", "!=", "in", "notin"]))
    if op in ("exists", "!"):
        return Requirement(key, op)
    if op in ("=", "!="):
        return Requirement(key, op, (draw(names),))
    values = draw(st.lists(names, min_size=1, max_size=3, unique=True))
    return Requirement(key, op, tuple(sorted(values)))


def reference(req: Requirement, labels: dict[str, str]) -> bool:
    present = req.key in labels
    value = labels.get(req.key)
    if req.op == "exists":
        return present
    if req.op == "!":
        return not present
    if req.op == "=":
        return present and value == req.values[0]
    if req.op == "!=":
        return not present or value != req.values[0]
    if req.op == "in":
        return present and value in req.values
    return not present or value not in req.values


@settings(max_examples=150, deadline=None)
@given(st.lists(requirements(), min_size=1, max_size=4), label_maps)
def test_render_parse_match_roundtrip(reqs: list[Requirement], labels: dict[str, str]) -> None:
    text = ",".join(str(r) for r in reqs)
    parsed = parse_label_selector(text)
    assert parsed == LabelSelector(tuple(reqs))
    assert parsed.matches(labels) == all(reference(r, labels) for r in reqs)


@settings(max_examples=150, deadline=None)
@given(label_maps)
def test_equality_selector_built_from_labels_matches_them(labels: dict[str, str]) -> None:
    selector = ",".join(f"{k}={v}" for k, v in labels.items())
    assert parse_label_selector(selector).matches(labels)


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=30))
def test_parser_never_crashes(text: str) -> None:
    with contextlib.suppress(SelectorError):
        parse_label_selector(text)
    with contextlib.suppress(SelectorError):
        parse_field_selector(text)


@settings(max_examples=150, deadline=None)
@given(st.text(alphabet="ab,=\\!", max_size=12))
def test_field_value_escaping_roundtrip(value: str) -> None:
    sel = parse_field_selector("metadata.name=x")
    req = type(sel.requirements[0])("metadata.name", value, False)
    reparsed = parse_field_selector(str(req))
    assert reparsed.requirements == (req,)
