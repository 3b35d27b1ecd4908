"""requestinfo.classify: kube-apiserver's own cases, the traps of DESIGN.md §3, and properties."""

# ruff: noqa: E501  (the case tables read best one case per line)

from __future__ import annotations

import contextlib
import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apiproxy.policy.requestinfo import MalformedRequest, RequestInfo, classify

# kube-apiserver's requestinfo_test.go success cases, re-expressed (HEAD is refused here, see below):
# method, url, verb, prefix, group, version, namespace, resource, subresource, name
KUBE_CASES = [
    ("GET", "/api/v1/namespaces", "list", "api", "", "v1", "", "namespaces", "", ""),
    ("GET", "/api/v1/namespaces/other", "get", "api", "", "v1", "other", "namespaces", "", "other"),
    ("GET", "/api/v1/namespaces/other/pods", "list", "api", "", "v1", "other", "pods", "", ""),
    ("GET", "/api/v1/namespaces/other/pods/foo", "get", "api", "", "v1", "other", "pods", "", "foo"),
    ("GET", "/api/v1/pods", "list", "api", "", "v1", "", "pods", "", ""),
    ("GET", "/api/v1/proxy/namespaces/other/pods/foo", "proxy", "api", "", "v1", "other", "pods", "", "foo"),
    ("GET", "/api/v1/watch/pods", "watch", "api", "", "v1", "", "pods", "", ""),
    ("GET", "/api/v1/pods?watch=true", "watch", "api", "", "v1", "", "pods", "", ""),
    ("GET", "/api/v1/pods?watch=false", "list", "api", "", "v1", "", "pods", "", ""),
    ("GET", "/api/v1/watch/namespaces/other/pods", "watch", "api", "", "v1", "other", "pods", "", ""),
    ("GET", "/api/v1/namespaces/other/pods?watch=1", "watch", "api", "", "v1", "other", "pods", "", ""),
    ("GET", "/api/v1/namespaces/other/pods?watch=0", "list", "api", "", "v1", "other", "pods", "", ""),
    ("GET", "/api/v1/namespaces/other/pods/foo/status", "get", "api", "", "v1", "other", "pods", "status", "foo"),
    ("PUT", "/api/v1/namespaces/other/finalize", "update", "api", "", "v1", "other", "namespaces", "finalize", "other"),
    ("PUT", "/api/v1/namespaces/other/status", "update", "api", "", "v1", "other", "namespaces", "status", "other"),
    ("PATCH", "/api/v1/namespaces/other/pods/foo", "patch", "api", "", "v1", "other", "pods", "", "foo"),
    ("DELETE", "/api/v1/namespaces/other/pods/foo", "delete", "api", "", "v1", "other", "pods", "", "foo"),
    ("POST", "/api/v1/namespaces/other/pods", "create", "api", "", "v1", "other", "pods", "", ""),
    ("DELETE", "/api/v1/nodes", "deletecollection", "api", "", "v1", "", "nodes", "", ""),
    ("DELETE", "/api/v1/namespaces", "deletecollection", "api", "", "v1", "", "namespaces", "", ""),
    ("DELETE", "/api/v1/namespaces/other/pods", "deletecollection", "api", "", "v1", "other", "pods", "", ""),
    (
        "DELETE",
        "/apis/extensions/v1/namespaces/other/pods",
        "deletecollection",
        "apis",
        "extensions",
        "v1",
        "other",
        "pods",
        "",
        "",
    ),
    ("POST", "/apis/extensions/v1/namespaces/other/pods", "create", "apis", "extensions", "v1", "other", "pods", "", ""),
    (
        "POST",
        "/apis/extensions/v1beta3/namespaces/other/pods",
        "create",
        "apis",
        "extensions",
        "v1beta3",
        "other",
        "pods",
        "",
        "",
    ),
    # TestGetNonAPIRequestInfo resource cases
    ("GET", "/api/version/resource", "list", "api", "", "version", "", "resource", "", ""),
    ("GET", "/apis/group/version/resource/name/subresource", "get", "apis", "group", "version", "", "resource", "subresource", "name"),
    ("GET", "/api/version/resource/name/subresource", "get", "api", "", "version", "", "resource", "subresource", "name"),
    ("GET", "/apis/batch/v1/job", "list", "apis", "batch", "v1", "", "job", "", ""),
    ("GET", "/apis/batch/v1/job/foo", "get", "apis", "batch", "v1", "", "job", "", "foo"),
    ("GET", "/apis/batch/v1/job/foo/scale", "get", "apis", "batch", "v1", "", "job", "scale", "foo"),
    # TestSelectorParsing
    ("GET", "/apis/group/version/resource", "list", "apis", "group", "version", "", "resource", "", ""),
    ("GET", "/apis/group/version/resource?fieldSelector=metadata.name=name1", "list", "apis", "group", "version", "", "resource", "", "name1"),
    ("GET", "/apis/group/version/resource?watch=true&fieldSelector=metadata.name=name1", "watch", "apis", "group", "version", "", "resource", "", "name1"),
    ("GET", "/apis/group/version/resource?fieldSelector=foo=bar&labelSelector=baz=qux", "list", "apis", "group", "version", "", "resource", "", ""),
    ("GET", "/apis/group/version/resource/name?fieldSelector=foo=bar&labelSelector=foo=bar", "get", "apis", "group", "version", "", "resource", "", "name"),
    ("GET", "/apis/group/version/watch/resource?fieldSelector=metadata.name=foo&labelSelector=foo=bar", "watch", "apis", "group", "version", "", "resource", "", ""),
    ("GET", "/apis/group/version/watch/resource/name?fieldSelector=metadata.name=foo", "watch", "apis", "group", "version", "", "resource", "", "name"),
    # beyond kube's table: what istiod sends
    ("GET", "/api/v1/namespaces/istio-system/configmaps?fieldSelector=metadata.name%3Distio", "list", "api", "", "v1", "istio-system", "configmaps", "", "istio"),
    ("GET", "/api/v1/namespaces/istio-system/configmaps?fieldSelector=metadata.name%3D%3Distio&watch=1", "watch", "api", "", "v1", "istio-system", "configmaps", "", "istio"),
    ("GET", "/api/v1/pods?fieldSelector=status.phase%21%3DFailed&limit=500&resourceVersion=0", "list", "api", "", "v1", "", "pods", "", ""),
    ("GET", "/api/v1/pods?fieldSelector=metadata.name!%3Dx", "list", "api", "", "v1", "", "pods", "", ""),
    ("GET", "/api/v1/nodes/node-1", "get", "api", "", "v1", "", "nodes", "", "node-1"),
    ("POST", "/apis/authentication.k8s.io/v1/tokenreviews", "create", "apis", "authentication.k8s.io", "v1", "", "tokenreviews", "", ""),
    ("GET", "/apis/rbac.authorization.k8s.io/v1/clusterroles/system:node", "get", "apis", "rbac.authorization.k8s.io", "v1", "", "clusterroles", "", "system:node"),
]  # fmt: skip


@pytest.mark.parametrize("case", KUBE_CASES, ids=lambda c: f"{c[0]} {c[1]}")
def test_kube_cases(case: tuple[str, ...]) -> None:
    method, url, verb, prefix, group, version, ns, resource, sub, name = case
    info = classify(method, url)
    assert info.is_resource_request
    assert (info.verb, info.api_prefix, info.api_group, info.api_version) == (verb, prefix, group, version)
    assert (info.namespace, info.resource, info.subresource, info.name) == (ns, resource, sub, name)
    assert info.method == method
    assert info.path == url.partition("?")[0]


NON_RESOURCE = [
    "/",
    "/api",
    "/api/v1",
    "/apis",
    "/apis/apps",
    "/apis/apps/v1",
    "/apis/extensions/v1beta1",
    "/version",
    "/healthz",
    "/openapi/v2",
    "/not-api/version/resource",
    "/badprefix/version/resource",
    "/API/v1/pods",  # prefixes are case-sensitive: kube routes nothing there
]


@pytest.mark.parametrize("path", NON_RESOURCE)
def test_non_resource(path: str) -> None:
    info = classify("GET", path)
    assert not info.is_resource_request
    assert info.verb == "get"
    assert (info.api_group, info.resource, info.name, info.namespace) == ("", "", "", "")
    assert classify("POST", path).verb == "post"


# Cases kube-apiserver accepts but reads in a way we refuse to rely on (or errors on).
KUBE_CASES_WE_REFUSE = [
    ("HEAD", "/api/v1/namespaces/other/pods/foo"),
    ("HEAD", "/api/v1/pods"),
    ("GET", "/api/v1/proxy/namespaces/other/pods/foo/subpath/not/a/subresource"),
    ("GET", "/api/v1/namespaces/other/pods/foo/proxy/subpath"),
    ("GET", "/api/version/"),  # kube trims the slash; we refuse it
    ("GET", "/apis/group/version/"),
    ("GET", "/apis/extensions/v1beta1/"),
    ("GET", ""),
    ("GET", "/apis/group/version/resource?fieldSelector=metadata.name=name1,foo"),
    ("GET", "/apis/group/version/resource?fieldSelector=metadata.name=foo&fieldSelector=metadata.name=bar"),
]


@pytest.mark.parametrize(("method", "target"), KUBE_CASES_WE_REFUSE)
def test_kube_cases_we_refuse(method: str, target: str) -> None:
    with pytest.raises(MalformedRequest):
        classify(method, target)


TRAPS = [
    ("GET", "http://evil/api/v1/pods", "absolute"),
    ("GET", "https://evil/api/v1/pods", "absolute"),
    ("GET", "*", "does not start"),
    ("GET", "api/v1/pods", "does not start"),
    ("GET", "//evil/api/v1/pods", "empty segment"),
    ("GET", "/api//v1/pods", "empty segment"),
    ("GET", "/api/v1/pods/", "ends with '/'"),
    ("GET", "/api/v1/namespaces//pods", "empty segment"),
    ("GET", "/api/v1/namespaces/./pods", "'.'"),
    ("GET", "/api/v1/namespaces/../secrets", "'..'"),
    ("GET", "/api/v1/../../apis/x", "'..'"),
    ("GET", "/api/v1/p%6fds", "percent"),
    ("GET", "/api/v1/namespaces/a%2Fb/pods", "percent"),
    ("GET", "/api/v1/pods%3Fwatch=1", "percent"),
    ("GET", "/api/v1/pods;watch=1", "';'"),
    ("GET", "/api/v1/pods?watch=1;x=2", "';'"),
    ("GET", "/api/v1\\pods", "'\\'"),
    ("GET", "/api/v1/pods?labelSelector=a\\b", "'\\'"),
    ("GET", "/api/v1/pods#frag", "fragment"),
    ("GET", "/api/v1/pods?x=1#frag", "fragment"),
    ("GET", "/api/v1/pods?watch=1#", "fragment"),
    ("GET", "/api/v1/pöds", "non-ASCII"),
    ("GET", "/api/v1/pods?labelSelector=ä", "non-ASCII"),
    ("GET", "/api/v1/pods?labelSelector=%C3%A4", "non-ASCII"),
    ("GET", "/api/v1/po ds", "not accepted"),
    ("GET", "/api/v1/pods?x=a b", "not accepted"),
    ("GET", "/api/v1/pods\t", "not accepted"),
    ("GET", "/api/v1/pods\r\nX: y", "not accepted"),
    ("GET", "/api/v1/pods?labelSelector=%0d%0aX", "control"),
    ("GET", "/api/v1/pods?labelSelector=%5c", "decodes to a"),
    ("GET", "/api/v1/pods?watch=1&watch=0", "more than once"),
    ("GET", "/api/v1/pods?watch=0&watch=1", "more than once"),
    ("GET", "/api/v1/pods?limit=1&limit=2", "more than once"),
    ("GET", "/api/v1/pods?foo=1&foo=2", "more than once"),
    ("GET", "/api/v1/pods?w%61tch=1", "[A-Za-z]+"),
    ("GET", "/api/v1/pods?watch[]=1", "not accepted"),
    ("GET", "/api/v1/pods?=1", "[A-Za-z]+"),
    ("GET", "/api/v1/pods?a=1&&b=2", "[A-Za-z]+"),
    ("GET", "/api/v1/pods?watch_=1", "[A-Za-z]+"),
    ("GET", "/api/v1/pods?labelSelector=%zz", "invalid percent"),
    ("GET", "/api/v1/pods?labelSelector=%4", "invalid percent"),
    ("GET", "/api/v1/pods?watch=f", "ambiguous"),
    ("GET", "/api/v1/pods?watch=yes", "ambiguous"),
    ("GET", "/api/v1/pods?watch=", "ambiguous"),
    ("GET", "/api/v1/pods?watch", "ambiguous"),
    ("GET", "/api/v1/pods?allowWatchBookmarks=maybe&watch=1", "true or false"),
    ("GET", "/api/v1/pods?limit=-1", "non-negative integer"),
    ("GET", "/api/v1/pods?timeoutSeconds=1e3", "non-negative integer"),
    ("GET", "/api/v1/pods?fieldSelector=metadata.name", "no operator"),
    ("GET", "/api/v1/pods?fieldSelector=metadata.name%3Da%3Db", "unescaped '='"),
    ("GET", "/api/v1/pods?fieldSelector=metadata.name+%3D+a", "invalid field name"),
    ("GET", "/api/v1/pods?fieldSelector=metadata.name%3D..", "not a valid object name"),
    ("GET", "/api/v1/pods?fieldSelector=metadata.name%3Da%2Fb", "not a valid object name"),
    ("GET", "/api/v1/pods?fieldSelector=metadata.name%3Da,metadata.name%3D%3Db", "more than once"),
    ("GET", "/api/v1/watch", "no resource"),
    ("GET", "/apis/apps/v1/proxy", "no resource"),
    ("GET", "/api/v1/namespaces/ns/pods/p/exec/x", "continues after the subresource"),
    ("GET", "/api/v1/namespaces/ns/status/x", "continues after the subresource"),
    ("GET", "/api/v1/proxy/nodes/n/x", "proxy"),
    ("OPTIONS", "/api/v1/pods", "not supported"),
    ("CONNECT", "/api/v1/pods", "not supported"),
    ("TRACE", "/", "not supported"),
    ("get", "/api/v1/pods", "not supported"),
]


@pytest.mark.parametrize(("method", "target", "message"), TRAPS, ids=lambda v: repr(v)[:50])
def test_traps_are_refused(method: str, target: str, message: str) -> None:
    with pytest.raises(MalformedRequest) as excinfo:
        classify(method, target)
    assert message in excinfo.value.message
    assert excinfo.value.code == (405 if message == "not supported" else 400)


@pytest.mark.parametrize("value", ["true", "TRUE", "True", "1"])
def test_watch_true_values(value: str) -> None:
    assert classify("GET", f"/api/v1/pods?watch={value}").verb == "watch"


@pytest.mark.parametrize("value", ["false", "FALSE", "False", "0"])
def test_watch_false_values(value: str) -> None:
    assert classify("GET", f"/api/v1/pods?watch={value}").verb == "list"


def test_watch_is_ignored_on_named_get_and_not_forwarded() -> None:
    info = classify("GET", "/api/v1/namespaces/a/pods/b?watch=true&resourceVersion=5")
    assert info.verb == "get"
    assert info.forward_target == "/api/v1/namespaces/a/pods/b?resourceVersion=5"


FORWARD = [
    ("GET", "/api/v1/pods", "/api/v1/pods"),
    ("GET", "/api/v1/pods?", "/api/v1/pods"),
    ("GET", "/api/v1/pods?foo=bar", "/api/v1/pods"),
    (
        "GET",
        "/api/v1/pods?resourceVersion=0&limit=500&Watch=1&watch=true&allowWatchBookmarks=true&x=y&timeoutSeconds=301",
        "/api/v1/pods?resourceVersion=0&limit=500&watch=true&allowWatchBookmarks=true&timeoutSeconds=301",
    ),
    (
        "GET",
        "/api/v1/pods?watch=1&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true",
        "/api/v1/pods?watch=1&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true",
    ),
    (
        "GET",
        "/api/v1/pods?labelSelector=app.kubernetes.io%2Fname%3Dx&continue=eyJ2IjoibWV0YS5rOHMuaW8vdjEifQ%3D%3D",
        "/api/v1/pods?labelSelector=app.kubernetes.io%2Fname%3Dx&continue=eyJ2IjoibWV0YS5rOHMuaW8vdjEifQ%3D%3D",
    ),
    ("GET", "/api/v1/namespaces/a/pods/b?pretty=true&limit=3", "/api/v1/namespaces/a/pods/b?pretty=true"),
    ("GET", "/version?timeout=32s&watch=1", "/version?timeout=32s"),
    ("POST", "/apis/authentication.k8s.io/v1/tokenreviews?dryRun=All&watch=1", "/apis/authentication.k8s.io/v1/tokenreviews?dryRun=All"),
]  # fmt: skip


@pytest.mark.parametrize(("method", "target", "forward"), FORWARD)
def test_forward_target(method: str, target: str, forward: str) -> None:
    assert classify(method, target).forward_target == forward


def test_fast_constructor_builds_the_same_object() -> None:
    info = classify("GET", "/api/v1/namespaces/ns/pods/p/status?resourceVersion=1")
    rebuilt = RequestInfo(**{f.name: getattr(info, f.name) for f in dataclasses.fields(RequestInfo)})
    assert rebuilt == info
    assert hash(rebuilt) == hash(info)
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.verb = "delete"  # type: ignore[misc]


def test_describe_and_resource_path() -> None:
    assert classify("GET", "/api/v1/namespaces/n/pods/p/log").resource_path == "pods/log"
    assert classify("GET", "/api/v1/pods").describe() == "list pods at the cluster scope (core/v1)"
    assert "non-resource" in classify("GET", "/version").describe()


# ----------------------------------------------------------------------------------------- properties

_SEGMENT = st.text(alphabet="abcz09.-_~:@%;\\# é\t/", min_size=0, max_size=8)
_KEYS = st.sampled_from(
    [
        "watch",
        "limit",
        "fieldSelector",
        "labelSelector",
        "resourceVersion",
        "continue",
        "pretty",
        "w%61tch",
        "x",
        "",
        "Watch",
    ]
)
_VALUES = st.text(alphabet="abtruefls01%3D2C=,.&;#\\+ é!metadn", max_size=16)
_PREFIXES = st.sampled_from(["/api/v1", "/apis/apps/v1", "/apis/g/v", "/api", "/", "", "/apis", "/API/v1"])
_MIDDLES = st.sampled_from(["", "/namespaces/ns", "/watch", "/watch/namespaces/ns", "/proxy", "/namespaces"])


@st.composite
def hostile_targets(draw: st.DrawFn) -> str:
    path = draw(_PREFIXES) + draw(_MIDDLES)
    for seg in draw(st.lists(_SEGMENT, max_size=4)):
        path += "/" + seg
    if draw(st.booleans()):
        pairs = draw(st.lists(st.tuples(_KEYS, st.sampled_from(["=", ""]), _VALUES), max_size=5))
        path += "?" + "&".join(k + eq + v for k, eq, v in pairs)
    return path


_METHODS = st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"])


def _is_subsequence(sub: list[str], seq: list[str]) -> bool:
    it = iter(seq)
    return all(any(x == y for y in it) for x in sub)


@settings(max_examples=1500, deadline=None)
@given(_METHODS, hostile_targets())
def test_classify_refuses_or_forwards_exactly(method: str, target: str) -> None:
    try:
        info = classify(method, target)
    except MalformedRequest as exc:
        assert exc.message
        return
    raw_path, _, raw_query = target.partition("?")
    fwd_path, sep, fwd_query = info.forward_target.partition("?")
    assert fwd_path == raw_path == info.path
    assert all(c not in raw_path for c in "%;\\# \t") and raw_path.isascii()
    if sep:
        assert fwd_query
        assert _is_subsequence(fwd_query.split("&"), raw_query.split("&"))
    again = classify(method, info.forward_target)
    assert again == dataclasses.replace(info)  # idempotent, including forward_target


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40), st.text(max_size=10))
def test_classify_never_raises_anything_else(target: str, method: str) -> None:
    with contextlib.suppress(MalformedRequest):
        classify(method, target)
