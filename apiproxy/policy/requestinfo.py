"""Classify a request exactly as kube-apiserver would, and refuse anything it might read differently.

:func:`classify` turns an HTTP method and the **raw** request-target (path plus ``?query``, exactly as it
arrived on the wire, not decoded) into a :class:`RequestInfo`: the verb, API group, version, namespace,
resource, subresource and name that kube-apiserver's own request-info resolver would derive. The policy
decides on that, and the proxy forwards :attr:`RequestInfo.forward_target` byte for byte, so what was
authorized is what the apiserver serves.

Classification follows kube-apiserver:

* ``/api/<version>/...`` is the core group (``""``), ``/apis/<group>/<version>/...`` a named group. Fewer
  segments than that (``/api``, ``/api/v1``, ``/apis``, ``/apis/<group>``, ``/apis/<group>/<version>``) and
  any other prefix (``/version``, ``/healthz``, ``/openapi/v2``, ``/API/v1/pods``: prefixes are
  case-sensitive) are *non-resource* requests whose verb is the lowercase HTTP method.
* ``namespaces/<ns>/<resource>[/<name>[/<subresource>]]`` is namespaced; ``namespaces/<ns>`` is the
  namespace object itself (resource ``namespaces``, name and namespace ``<ns>``), and
  ``namespaces/<ns>/status`` and ``namespaces/<ns>/finalize`` are its subresources.
* ``watch/...`` and ``proxy/...`` after the version set the verb from the path (deprecated forms).
* GET is ``get`` with a name; without one it is ``list``, or ``watch`` when the first ``watch`` value is
  true. kube-apiserver treats *every* value except ``0`` and ``false`` (any case) as true, including
  ``watch=`` and ``watch=f``; this module accepts only ``true``, ``false``, ``1`` and ``0`` (any case) and
  refuses the rest rather than guess.
* On ``list``/``watch`` (not the deprecated ``watch/`` paths), a ``fieldSelector`` that requires
  ``metadata.name=X`` (or ``metadata.name==X``) names object ``X``, as in RBAC.
* POST is ``create``, PUT ``update``, PATCH ``patch``, DELETE ``delete`` (``deletecollection`` without a
  name). They are classified so the policy can refuse them by name.

Refused with :class:`MalformedRequest` (the message is shown to the client): methods other than GET, POST,
PUT, PATCH and DELETE (HEAD too: no client of ours sends it, kube would map it to get/list/watch and a HEAD
on a watch holds a stream open with no body to show for it); targets not starting with ``/`` (absolute
form, ``*``); empty, ``.`` and ``..`` path segments, a trailing ``/``; any ``%`` in the path; ``;``, ``\\``,
``#``, spaces, control or non-ASCII characters anywhere; path characters outside ``A-Za-z0-9-._~:@``;
segments after a subresource (kube ignores them when authorizing but routes them, e.g. to
``pods/<name>/proxy/<anything>``); ``watch/`` or ``proxy/`` with nothing after them; in the query, keys not
matching ``[A-Za-z]+`` (so ``w%61tch`` cannot smuggle a second ``watch``), any key given twice, invalid
percent-escapes, non-ASCII, control characters or ``\\`` in a decoded value, non-canonical booleans and
non-decimal integers in the parameters we forward, and field selectors we cannot read exactly like kube
(escapes, terms without an operator, two ``metadata.name`` equality terms, a name that is not a valid
path segment).

Forwarded query parameters (all others are dropped; kept ones stay in their original order and raw
encoding). These are the parameters kube-apiserver reads for each verb (``ListOptions``, ``GetOptions``,
``CreateOptions`` plus the generic ``pretty`` and ``timeout``):

========================  ===================================================================
verb                      parameters
========================  ===================================================================
list, watch               watch, resourceVersion, resourceVersionMatch, timeoutSeconds, limit,
                          continue, labelSelector, fieldSelector, allowWatchBookmarks,
                          sendInitialEvents, pretty, timeout
get                       resourceVersion, pretty, timeout
create                    dryRun, fieldManager, fieldValidation, pretty, timeout
update, patch             dryRun, fieldManager, fieldValidation, pretty, timeout (+ force for patch)
delete                    dryRun, gracePeriodSeconds, propagationPolicy, orphanDependents, pretty, timeout
deletecollection          the list set plus the delete set
non-resource, proxy       timeout
========================  ===================================================================

No cache: the target includes ``resourceVersion`` and ``continue`` tokens, so hits would be rare and a
cache keyed by client input is memory an attacker can fill. A classification takes a few microseconds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["FORWARDED_PARAMS", "MalformedRequest", "RequestInfo", "classify"]


class MalformedRequest(ValueError):
    """The request cannot be classified without guessing; ``message`` goes to the client in a Status.

    ``code`` is the HTTP status to answer with: 400, or 405 for an unsupported method.
    """

    def __init__(self, message: str, *, code: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


@dataclass(frozen=True, slots=True)
class RequestInfo:
    """What kube-apiserver would make of a request (its ``request.RequestInfo``), plus what we forward."""

    method: str
    path: str
    verb: str
    is_resource_request: bool
    api_prefix: str
    api_group: str
    api_version: str
    namespace: str
    resource: str
    subresource: str
    name: str
    #: The raw path + ``?`` + only the forwarded query pairs, raw and in order (no ``?`` if none).
    forward_target: str

    @property
    def resource_path(self) -> str:
        """``resource`` or ``resource/subresource``, the form policies and RBAC use."""
        return f"{self.resource}/{self.subresource}" if self.subresource else self.resource

    def describe(self) -> str:
        """One line for logs and ``explain``: ``list pods in namespace "ns" (core/v1)``."""
        if not self.is_resource_request:
            return f"{self.verb} non-resource URL {self.path!r}"
        group = self.api_group or "core"
        what = self.resource_path
        if self.name:
            what += f" {self.name!r}"
        where = f'in namespace "{self.namespace}"' if self.namespace else "at the cluster scope"
        return f"{self.verb} {what} {where} ({group}/{self.api_version})"


# A frozen dataclass's __init__ goes through object.__setattr__ once per field, which costs about as much
# as the rest of classify() together. classify() fills the slots directly instead; the result is the same
# object the normal constructor builds (tests/policy/test_requestinfo.py checks that).
_NEW = object.__new__
(
    _S_METHOD,
    _S_PATH,
    _S_VERB,
    _S_IS_RESOURCE,
    _S_PREFIX,
    _S_GROUP,
    _S_VERSION,
    _S_NAMESPACE,
    _S_RESOURCE,
    _S_SUBRESOURCE,
    _S_NAME,
    _S_FORWARD,
) = (RequestInfo.__dict__[f].__set__ for f in RequestInfo.__slots__)


def _make_info(
    method: str,
    path: str,
    verb: str,
    is_resource_request: bool,
    api_prefix: str,
    api_group: str,
    api_version: str,
    namespace: str,
    resource: str,
    subresource: str,
    name: str,
    forward_target: str,
) -> RequestInfo:
    info: RequestInfo = _NEW(RequestInfo)
    _S_METHOD(info, method)
    _S_PATH(info, path)
    _S_VERB(info, verb)
    _S_IS_RESOURCE(info, is_resource_request)
    _S_PREFIX(info, api_prefix)
    _S_GROUP(info, api_group)
    _S_VERSION(info, api_version)
    _S_NAMESPACE(info, namespace)
    _S_RESOURCE(info, resource)
    _S_SUBRESOURCE(info, subresource)
    _S_NAME(info, name)
    _S_FORWARD(info, forward_target)
    return info


_LIST_PARAMS = frozenset(
    {
        "watch",
        "resourceVersion",
        "resourceVersionMatch",
        "timeoutSeconds",
        "limit",
        "continue",
        "labelSelector",
        "fieldSelector",
        "allowWatchBookmarks",
        "sendInitialEvents",
        "pretty",
        "timeout",
    }
)
_WRITE_PARAMS = frozenset({"dryRun", "fieldManager", "fieldValidation", "pretty", "timeout"})
_DELETE_PARAMS = frozenset(
    {"dryRun", "gracePeriodSeconds", "propagationPolicy", "orphanDependents", "pretty", "timeout"}
)

#: verb → the query parameters forwarded for it (see the module docstring).
FORWARDED_PARAMS: dict[str, frozenset[str]] = {
    "list": _LIST_PARAMS,
    "watch": _LIST_PARAMS,
    "get": frozenset({"resourceVersion", "pretty", "timeout"}),
    "create": _WRITE_PARAMS,
    "update": _WRITE_PARAMS,
    "patch": _WRITE_PARAMS | {"force"},
    "delete": _DELETE_PARAMS,
    "deletecollection": _LIST_PARAMS | _DELETE_PARAMS,
}
_NON_RESOURCE_PARAMS = frozenset({"timeout"})

_BOOL_PARAMS = frozenset(
    {"watch", "allowWatchBookmarks", "sendInitialEvents", "pretty", "force", "orphanDependents"}
)
_INT_PARAMS = frozenset({"limit", "timeoutSeconds", "gracePeriodSeconds"})
_BOOL_VALUES = {"true": True, "1": True, "false": False, "0": False}

_METHOD_VERBS = {"GET": "get", "POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}

#: The whole path in one C-level match: "/" or one or more "/segment" with only safe characters.
_PATH_OK = re.compile(r"/|(?:/[A-Za-z0-9._~:@-]+)+").fullmatch
_PATH_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._~:@-/")
#: Characters a raw query may hold (RFC 3986 query characters minus ';'); '%' is checked per value.
_QUERY_OK = re.compile(r"[A-Za-z0-9._~:@!$'()*+,=&/?%-]*").fullmatch
_PERCENT_OK = re.compile(r"%[0-9A-Fa-f]{2}").match
#: A percent-escape that is invalid or decodes to non-ASCII, a control character or '\\'.
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})|%[0189A-Fa-f]|%7[Ff]|%5[Cc]").search
_FIELD_LABEL_OK = re.compile(r"[A-Za-z0-9._-]+").fullmatch

_SPECIAL_VERBS = frozenset({"watch", "proxy"})
_NAMESPACE_SUBRESOURCES = frozenset({"status", "finalize"})


def classify(method: str, target: str) -> RequestInfo:
    """Classify ``method`` + raw ``target`` as kube-apiserver would; raise :class:`MalformedRequest`."""
    method_verb = _METHOD_VERBS.get(method)
    if method_verb is None:
        shown = method if method.isascii() and method.isprintable() else repr(method)
        raise MalformedRequest(
            f"method {shown} is not supported: only GET, POST, PUT, PATCH and DELETE are understood", code=405
        )

    path, _, query = target.partition("?")
    if not _PATH_OK(path):
        raise MalformedRequest(_path_problem(path))
    parts = path.split("/")[1:] if len(path) > 1 else []
    if "." in parts or ".." in parts:
        raise MalformedRequest(f"path {path!r} has a '.' or '..' segment")

    params = _parse_query(query) if query else {}

    # --- resource or non-resource (kube: fewer than 3 parts or an unknown prefix → non-resource) ---
    n = len(parts)
    prefix = parts[0] if n else ""
    if n < 3 or (prefix != "api" and prefix != "apis") or (prefix == "apis" and n < 4):
        verb = method.lower()
        return _make_info(
            method,
            path,
            verb,
            False,
            "",
            "",
            "",
            "",
            "",
            "",
            "",
            _forward(path, query, params, _NON_RESOURCE_PARAMS),
        )

    if prefix == "api":
        group = ""
        version = parts[1]
        rest = parts[2:]
    else:
        group = parts[1]
        version = parts[2]
        rest = parts[3:]

    verb_via_path = False
    if rest[0] in _SPECIAL_VERBS:
        if len(rest) < 2:
            raise MalformedRequest(f"path {path!r} names the {rest[0]!r} verb but no resource")
        verb = rest[0]
        rest = rest[1:]
        verb_via_path = True
    else:
        verb = method_verb

    namespace = ""
    if rest[0] == "namespaces" and len(rest) > 1:
        namespace = rest[1]
        if len(rest) > 2 and rest[2] not in _NAMESPACE_SUBRESOURCES:
            rest = rest[2:]

    nrest = len(rest)
    if nrest > 3:
        raise MalformedRequest(
            f"path {path!r} continues after the subresource {rest[2]!r}; such paths reach proxies "
            "and are never forwarded"
        )
    resource = rest[0]
    name = rest[1] if nrest >= 2 else ""
    subresource = rest[2] if nrest == 3 and verb != "proxy" else ""
    if nrest == 3 and verb == "proxy":
        raise MalformedRequest(f"path {path!r} continues after the object name of a proxy request")

    if not name and verb == "get":
        verb = "watch" if params and _bool_param(params, "watch") else "list"
        if not verb_via_path and params and "fieldSelector" in params:
            name = _name_from_field_selector(_value(params["fieldSelector"]))
    elif not name and verb == "delete":
        verb = "deletecollection"

    allowed = FORWARDED_PARAMS.get(verb, _NON_RESOURCE_PARAMS)
    return _make_info(
        method,
        path,
        verb,
        True,
        prefix,
        group,
        version,
        namespace,
        resource,
        subresource,
        name,
        _forward(path, query, params, allowed),
    )


# --------------------------------------------------------------------------------------------- helpers


def _path_problem(path: str) -> str:
    """Say precisely why a path failed :data:`_PATH_OK` (only runs for bad requests)."""
    if not path:
        return "request target is empty"
    if path[0] != "/":
        if "://" in path or path.startswith("//"):
            return f"absolute-form request target {path[:80]!r} is not accepted; send the path only"
        return f"request target {path[:80]!r} does not start with '/'"
    for ch in path:
        if ch in _PATH_CHARS:
            continue
        if ch == "%":
            return "percent-escapes are not accepted in the path"
        if ch == "#":
            return "a fragment ('#') is not accepted in the request target"
        if ch == ";":
            return "';' is not accepted in the path"
        if ch == "\\":
            return "'\\' is not accepted in the path"
        if not ch.isascii():
            return "non-ASCII characters are not accepted in the path"
        if not ch.isprintable() or ch == " ":
            return f"character {ch!r} is not accepted in the path"
        return f"character {ch!r} is not accepted in the path (allowed: A-Z a-z 0-9 - . _ ~ : @)"
    if path.endswith("/"):
        return f"path {path[:80]!r} ends with '/'; remove the trailing slash"
    return f"path {path[:80]!r} has an empty segment ('//')"


def _query_problem(query: str) -> str:
    for ch in query:
        if ch == ";":
            return "';' is not accepted in the query; separate parameters with '&'"
        if ch == "#":
            return "a fragment ('#') is not accepted in the request target"
        if ch == "\\":
            return "'\\' is not accepted in the query"
        if not ch.isascii():
            return "non-ASCII characters are not accepted in the query; percent-encode them"
        if not _QUERY_OK(ch):
            return f"character {ch!r} is not accepted in the query; percent-encode it"
    return "query is malformed"  # pragma: no cover - only reached if _QUERY_OK and this scan disagree


def _parse_query(query: str) -> dict[str, str]:
    """``key → raw "key=value" pair`` in original order; refuses anything ambiguous.

    Values are validated here without being decoded; :func:`_value` decodes the few that are read.
    """
    if not _QUERY_OK(query):
        raise MalformedRequest(_query_problem(query))
    params: dict[str, str] = {}
    for pair in query.split("&"):
        key, _, raw = pair.partition("=")
        if not key.isalpha():  # the query is ASCII here, so this is [A-Za-z]+
            # Only the name is shown: the value of an unknown parameter may be a credential.
            shown = key if len(key) <= 40 else key[:40] + "..."
            raise MalformedRequest(f"query parameter {shown!r} has no name or a name that is not [A-Za-z]+")
        if key in params:
            raise MalformedRequest(f"query parameter {key!r} is given more than once")
        if "%" in raw and _BAD_ESCAPE(raw):
            raise MalformedRequest(_escape_problem(key, raw))
        params[key] = pair
    return params


def _escape_problem(key: str, raw: str) -> str:
    bad = _BAD_ESCAPE(raw)
    assert bad is not None
    text = bad.group()
    if not _PERCENT_OK(raw, bad.start()):
        return f"query parameter {key!r} has an invalid percent-escape"
    if text[1] in "89ABCDEFabcdef":
        return f"query parameter {key!r} decodes to non-ASCII bytes"
    if text.lower() == "%5c":
        return f"query parameter {key!r} decodes to a '\\'"
    return f"query parameter {key!r} decodes to control characters"


def _value(pair: str) -> str:
    """The decoded value of a pair already checked by :func:`_parse_query` (ASCII, no controls)."""
    raw = pair.partition("=")[2]
    if "+" in raw:
        raw = raw.replace("+", " ")
    if "%" in raw:
        # Every escape here is valid and below 0x80 (checked by _BAD_ESCAPE), so each "%XY" is one char.
        chunks = raw.split("%")
        raw = chunks[0] + "".join(chr(int(c[:2], 16)) + c[2:] for c in chunks[1:])
    return raw


def _bool_param(params: dict[str, str], key: str) -> bool:
    pair = params.get(key)
    if pair is None:
        return False
    value = _value(pair)
    parsed = _BOOL_VALUES.get(value.lower())
    if parsed is None:
        raise MalformedRequest(
            f"query parameter {key}={value!r} is ambiguous: use true or false "
            "(kube-apiserver reads every value except 0 and false as true)"
        )
    return parsed


def _name_from_field_selector(selector: str) -> str:
    """The object a field selector pins with ``metadata.name=`` (kube's ``RequiresExactMatch``), or ""."""
    name: str | None = None
    for term in selector.split(","):
        if not term:
            continue  # kube skips empty terms
        eq = term.find("=")
        ne = term.find("!=")
        if eq < 0:
            raise MalformedRequest(f"fieldSelector term {term!r} has no operator (=, == or !=)")
        if 0 <= ne < eq:
            lhs, op, rhs = term[:ne], "!=", term[ne + 2 :]
        elif term.startswith("==", eq):
            lhs, op, rhs = term[:eq], "==", term[eq + 2 :]
        else:
            lhs, op, rhs = term[:eq], "=", term[eq + 1 :]
        if not _FIELD_LABEL_OK(lhs):
            raise MalformedRequest(f"fieldSelector term {term!r} has an invalid field name {lhs!r}")
        if "=" in rhs:
            raise MalformedRequest(f"fieldSelector term {term!r} has an unescaped '=' in its value")
        if lhs == "metadata.name" and op != "!=":
            if name is not None:
                raise MalformedRequest("fieldSelector names metadata.name more than once")
            name = rhs
    if name is None:
        return ""
    if name in (".", "..") or "/" in name or "%" in name:
        raise MalformedRequest(f"fieldSelector metadata.name={name!r} is not a valid object name")
    return name


def _forward(path: str, query: str, params: dict[str, str], allowed: frozenset[str]) -> str:
    if not params:
        return path
    kept: list[str] = []
    for key, pair in params.items():
        if key not in allowed:
            continue
        if key in _BOOL_PARAMS:
            _bool_param(params, key)
        elif key in _INT_PARAMS:
            value = _value(pair)
            if not (value.isdigit() and len(value) <= 18):
                raise MalformedRequest(f"query parameter {key}={value!r} must be a non-negative integer")
        kept.append(pair)
    if not kept:
        return path
    if len(kept) == len(params):
        return f"{path}?{query}"
    return f"{path}?{'&'.join(kept)}"
