"""An in-memory Kubernetes API server (aiohttp, 127.0.0.1, any free port): the one emulator of the project, for the
operator's tests (tests/operator/conftest.py) and for ``make bench-operator`` (bench/operator_load.py).

It is built to stay fast at a benchmark's scale (a thousand InferenceServices are several thousand requests):
every request costs O(1), or O(log n) to replay a watch from a resource version; a list or a watch's initial events
cost O(objects).

It implements what the operator and kopf use, with a real API server's semantics where they matter:

- discovery (``/api``, ``/api/v1``, ``/apis``, ``/apis/{group}``, ``/apis/{group}/{version}``, ``/version``);
- list (``labelSelector``, ``fieldSelector`` on ``metadata.name``/``metadata.namespace``, ``limit``/``continue``);
- watch: JSON lines ADDED/MODIFIED/DELETED from ``resourceVersion`` (replayed from a window of recent changes, 410
  Gone before it, like the watch cache), the current objects as ADDED without one, BOOKMARKs when allowed (every
  ``bookmark_seconds``, and ``sendInitialEvents``' end marker), ``timeoutSeconds``; an object that stops or starts
  matching a watch's selector is DELETED from it or ADDED to it, as the real server does;
- get, create (409 when it exists, ``generateName``), update (PUT, 409 on a stale ``resourceVersion``), delete (404
  when missing; ``deletionTimestamp`` first while finalizers remain);
- patch: JSON merge patch (RFC 7386; strategic merge patch is taken as one), JSON patch (RFC 6902, a failed
  ``test`` is 422), server-side apply (creates the object when missing);
- the ``status`` subresource (writes to the object ignore ``status``, writes to ``status`` ignore the rest) and a
  CRD's ``scale`` subresource (``autoscaling/v1`` Scale over its spec/status replicas and selector paths);
- every write bumps one global ``metadata.resourceVersion``; create sets ``uid``, ``creationTimestamp`` and
  ``generation: 1``; a change of ``spec`` bumps ``generation``, a status write does not; a write that changes
  nothing changes nothing (no new resourceVersion, no watch event), as with the real server;
- errors are ``Status`` objects with the right code and reason;
- optional throttling: a user's requests above ``throttle_rps`` (a token bucket per bearer token, one second of
  burst) are answered 429 with ``Retry-After: 1``, as API Priority and Fairness does (its flows are per user, and
  it bounds concurrency rather than a rate); watches, long-running requests, are exempt, as there.

Simplified, on purpose: server-side apply merges the applied fields into the object (JSON merge patch) and keeps no
``managedFields``, so a field a manager stops applying is not removed; no admission, no schema validation or
defaulting (a CRD only adds its resource); no namespace existence check; no garbage collector (that is
kube-controller-manager's, not the API server's) and no other controller, so nothing sets a Deployment's status;
a paged list is not one snapshot across its pages; no authentication (any token is accepted).

For tests: with ``record=True`` the server keeps every request it receives, in order, as a ``Request`` (its verb,
resource, name, headers and body); ``requests()`` lists them, filtered by method, resource, name or user agent.
``inject(Reply(...), times=N, ...)`` answers the next N requests that match such a filter (every one, without N)
with a given status, headers and body, after an optional delay, instead of serving them; they are counted and
recorded all the same. It serves in the event loop it is started in: under a fake clock (looptime), watch timeouts,
bookmarks and delays run on that clock.

Stored objects are never mutated (a write stores a new dict): what ``get`` returns may be kept, not changed.
Counters by verb, ``received`` and ``throttled`` say what clients asked; ``changed`` (an ``asyncio.Condition``) is
notified after every request answered but a watch, to wait on predicates without sleeps.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import bisect
import collections
import contextlib
import datetime
import itertools
import re
import socket
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonpatch
import orjson
import yaml
from aiohttp import web
from kubeserve.operator.merge_patch import merge_patch

JSON_PATCH = "application/json-patch+json"
MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"
# Changes kept per resource to resume watches from (the watch cache's window; older: 410 Gone).
HISTORY = 20_000
STATUS_REASONS = {
    400: "BadRequest",
    404: "NotFound",
    405: "MethodNotAllowed",
    409: "Conflict",
    410: "Expired",
    415: "UnsupportedMediaType",
    422: "Invalid",
    429: "TooManyRequests",
}

Labels = Mapping[str, str]
Selector = Callable[[Mapping[str, Any]], bool]


class ApiError(Exception):
    """Answered as a ``Status`` object."""

    def __init__(self, code: int, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message = code, message
        self.reason = reason or STATUS_REASONS.get(code, "InternalError")


@dataclass(frozen=True)
class Scale:
    """A scale subresource: where the replicas and the selector are in the object (a CRD's paths, split)."""

    spec_replicas: tuple[str, ...] = ("spec", "replicas")
    status_replicas: tuple[str, ...] = ("status", "replicas")
    selector: tuple[str, ...] | None = ("status", "selector")


@dataclass(frozen=True)
class Resource:
    group: str  # "" for the core group
    version: str
    plural: str
    kind: str
    namespaced: bool = True
    singular: str = ""
    status: bool = False  # a status subresource
    scale: Scale | None = None
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def key(self) -> str:
        """``v1/services``, ``apps/v1/deployments``: the name the bench looks objects up by."""
        return f"{self.api_version}/{self.plural}"


VERBS = ["create", "delete", "get", "list", "patch", "update", "watch"]
BUILTIN = (
    Resource("", "v1", "namespaces", "Namespace", namespaced=False, status=True, short_names=("ns",)),
    Resource("", "v1", "pods", "Pod", status=True, short_names=("po",)),
    Resource("", "v1", "services", "Service", status=True, short_names=("svc",)),
    Resource("", "v1", "configmaps", "ConfigMap", short_names=("cm",)),
    Resource("", "v1", "events", "Event", short_names=("ev",)),
    Resource("apps", "v1", "deployments", "Deployment", status=True, short_names=("deploy",)),
    Resource("autoscaling", "v2", "horizontalpodautoscalers", "HorizontalPodAutoscaler", status=True),
    Resource("events.k8s.io", "v1", "events", "Event", short_names=("ev",)),
    Resource("apiextensions.k8s.io", "v1", "customresourcedefinitions", "CustomResourceDefinition", False, status=True),
)


def crd_resources(crd: Mapping[str, Any]) -> list[Resource]:
    """The resources a CustomResourceDefinition serves (one per served version)."""
    spec, names = crd["spec"], crd["spec"]["names"]
    resources = []
    for version in spec["versions"]:
        if not version.get("served", True):
            continue
        subresources = version.get("subresources") or {}
        scale = None
        if "scale" in subresources:
            paths = subresources["scale"]
            selector = paths.get("labelSelectorPath")
            scale = Scale(
                _path(paths["specReplicasPath"]),
                _path(paths["statusReplicasPath"]),
                _path(selector) if selector else None,
            )
        resources.append(
            Resource(
                spec["group"],
                version["name"],
                names["plural"],
                names["kind"],
                namespaced=spec.get("scope", "Namespaced") == "Namespaced",
                singular=names.get("singular", names["kind"].lower()),
                status="status" in subresources,
                scale=scale,
                short_names=tuple(names.get("shortNames") or ()),
                categories=tuple(names.get("categories") or ()),
            )
        )
    return resources


def _path(json_path: str) -> tuple[str, ...]:
    return tuple(json_path.lstrip(".").split("."))


# --- Watches -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Change:
    """One write, as watches see it: ``old`` is None for a creation, ``new`` is the final object for a deletion."""

    version: int
    type: str  # ADDED, MODIFIED, DELETED
    old: Mapping[str, Any] | None
    new: Mapping[str, Any]


@dataclass(eq=False)
class Watcher:
    namespace: str | None
    selects: Selector
    lines: list[bytes] = field(default_factory=list)
    wake: asyncio.Event = field(default_factory=asyncio.Event)

    def offer(self, change: Change) -> None:
        if self.namespace is not None and change.new["metadata"].get("namespace") != self.namespace:
            return
        was = change.old is not None and self.selects(change.old)
        now = change.type != "DELETED" and self.selects(change.new)
        if was and not now:  # deleted, or no longer selected: gone from this watch's view
            self.lines.append(event_line("DELETED", change.new))
        elif now:
            self.lines.append(event_line("MODIFIED" if was else "ADDED", change.new))
        else:
            return
        self.wake.set()


def event_line(kind: str, obj: Mapping[str, Any]) -> bytes:
    return orjson.dumps({"type": kind, "object": obj}) + b"\n"


@dataclass(eq=False)
class Store:
    """One resource's objects, by (namespace, name) ("" for cluster-scoped), and its recent changes."""

    resource: Resource
    objects: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    history: list[Change] = field(default_factory=list)
    versions: list[int] = field(default_factory=list)  # the history's, for bisect
    watchers: set[Watcher] = field(default_factory=set)
    # (label, value) -> the keys of the objects with it: a lookup by label without a scan.
    labelled: collections.defaultdict[tuple[str, str], set[tuple[str, str]]] = field(
        default_factory=lambda: collections.defaultdict(set)
    )
    dropped: int = 0  # the version of the latest change no longer in the history

    def put(self, key: tuple[str, str], obj: dict[str, Any] | None) -> None:
        """Store ``obj`` under ``key`` (None: remove it), keeping the label index."""
        old = self.objects.pop(key, None)
        for label in (old or {}).get("metadata", {}).get("labels", {}).items():
            self.labelled[label].discard(key)
        if obj is not None:
            self.objects[key] = obj
            for label in obj["metadata"].get("labels", {}).items():
                self.labelled[label].add(key)

    def record(self, change: Change) -> None:
        self.history.append(change)
        self.versions.append(change.version)
        if len(self.history) > 2 * HISTORY:  # trimmed by half of it at once: amortised O(1)
            self.dropped = self.versions[-HISTORY - 1]
            del self.history[:-HISTORY], self.versions[:-HISTORY]
        for watcher in self.watchers:
            watcher.offer(change)

    def since(self, version: int) -> list[Change] | None:
        """The changes after ``version``; None when the history no longer reaches back that far."""
        if version < self.dropped:
            return None
        return self.history[bisect.bisect_right(self.versions, version) :]


# --- Selectors ---------------------------------------------------------------------------------------------------

_REQUIREMENT = re.compile(
    r"^\s*(?:(?P<not>!)\s*(?P<absent>[\w./-]+)"
    r"|(?P<key>[\w./-]+)\s*(?:(?P<op>==|=|!=)\s*(?P<value>[\w./-]*)"
    r"|\s+(?P<setop>in|notin)\s*\((?P<values>[^)]*)\))?)\s*$"
)


def label_selector(text: str | None) -> Callable[[Labels], bool]:
    """Kubernetes label selector syntax: ``a=b``, ``a==b``, ``a!=b``, ``a in (b,c)``, ``a notin (b)``, ``a``,
    ``!a``, comma-separated (all must hold)."""
    if not text:
        return lambda labels: True
    checks: list[Callable[[Labels], bool]] = []
    for requirement in re.split(r",(?![^()]*\))", text):
        match = _REQUIREMENT.match(requirement)
        if match is None:
            raise ApiError(400, f"unable to parse requirement: {requirement!r}")
        checks.append(_requirement(match))
    return lambda labels: all(check(labels) for check in checks)


def _requirement(match: re.Match[str]) -> Callable[[Labels], bool]:
    if match["not"]:
        absent = match["absent"]
        return lambda labels: absent not in labels
    key, op, value = match["key"], match["op"], match["value"]
    if op in ("=", "=="):
        return lambda labels: labels.get(key) == value
    if op == "!=":
        return lambda labels: labels.get(key) != value
    if match["setop"]:
        values = {item.strip() for item in match["values"].split(",")}
        if match["setop"] == "in":
            return lambda labels: labels.get(key) in values
        return lambda labels: labels.get(key) not in values
    return lambda labels: key in labels


def field_selector(text: str | None) -> Callable[[Mapping[str, Any]], bool]:
    """Only ``metadata.name`` and ``metadata.namespace`` (``=``, ``==``, ``!=``): what every resource supports."""
    if not text:
        return lambda metadata: True
    checks: list[Callable[[Mapping[str, Any]], bool]] = []
    for requirement in text.split(","):
        match = re.fullmatch(r"\s*metadata\.(name|namespace)\s*(==|=|!=)\s*([\w.-]*)\s*", requirement)
        if match is None:
            raise ApiError(400, f"field label not supported: {requirement!r}")
        name, op, value = match.groups()
        checks.append(lambda metadata, n=name, v=value, eq=op != "!=": (metadata.get(n) == v) == eq)
    return lambda metadata: all(check(metadata) for check in checks)


def selector(query: Mapping[str, str]) -> Selector:
    labels, fields = label_selector(query.get("labelSelector")), field_selector(query.get("fieldSelector"))
    return lambda obj: labels(obj["metadata"].get("labels") or {}) and fields(obj["metadata"])


# --- Patches -----------------------------------------------------------------------------------------------------


def json_patch(target: Any, operations: Any) -> Any:
    """RFC 6902 on a copy of ``target``; an operation that fails (a ``test``, a missing path) is 422, as the API server
    answers."""
    if not isinstance(operations, list):
        raise ApiError(400, "a JSON patch is a list of operations")
    try:
        return jsonpatch.JsonPatch(operations).apply(copy(target), in_place=True)
    except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as error:
        raise ApiError(422, f"the server rejected our request due to an error in our request: {error}") from None


def copy(value: Any) -> Any:
    """A deep copy of JSON data (orjson's round trip is several times faster than ``copy.deepcopy``)."""
    return orjson.loads(orjson.dumps(value))


def _get(obj: Mapping[str, Any], path: Iterable[str]) -> Any:
    for part in path:
        if not isinstance(obj, Mapping):
            return None
        obj = obj.get(part)  # type: ignore[assignment]
    return obj


def _set(obj: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for part in path[:-1]:
        obj = obj.setdefault(part, {})
    obj[path[-1]] = value


# --- The server --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Route:
    resource: Resource
    namespace: str | None
    name: str | None
    subresource: str | None


class TokenBucket:
    def __init__(self, rate: float) -> None:
        self.rate = self.burst = self.tokens = rate
        self.last = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


# --- For tests: the request log and injected replies -----------------------------------------------------------


@dataclass(frozen=True, slots=True, eq=False)
class Request:
    """A request as received. ``verb`` is the API server's (``get``, ``list``, ``watch``, ``create``, ``update``,
    ``patch``, ``delete``, ``deletecollection``), or ``discovery``, or ``unknown`` for what is not served."""

    method: str
    path: str
    query: Mapping[str, str]
    headers: Mapping[str, str]  # case-insensitive
    content: bytes
    verb: str
    resource: Resource | None
    namespace: str | None
    name: str | None
    subresource: str | None

    @property
    def body(self) -> Any:
        """The body, parsed anew on each access (JSON, or YAML as an apply may be); None when empty."""
        return _parse(self.content, yaml_too=True) if self.content else None


@dataclass(frozen=True, slots=True)
class Match:
    """Requests whose method, resource (as ``apps/v1/deployments``, any subresource of it too), name and user agent
    are those given; None matches any."""

    method: str | None = None
    resource: str | None = None
    name: str | None = None
    user_agent: str | None = None

    def __call__(self, request: Request) -> bool:
        return (
            self.method in (None, request.method)
            and self.resource in (None, request.resource.key if request.resource else None)
            and self.name in (None, request.name)
            and self.user_agent in (None, request.headers.get("User-Agent"))
        )


@dataclass(frozen=True)
class Reply:
    """An injected answer: ``status`` with ``headers`` and ``body`` (sent as JSON; no body when None), after ``delay``
    seconds on the loop's clock."""

    status: int
    body: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)
    delay: float = 0.0

    async def response(self) -> web.Response:
        await asyncio.sleep(self.delay)
        if self.body is None:
            return web.Response(status=self.status, headers=self.headers)
        headers = {"Content-Type": "application/json", **self.headers}
        return web.Response(body=orjson.dumps(self.body), status=self.status, headers=headers)


@dataclass(eq=False)
class Injection:
    reply: Reply
    match: Match
    left: int | None  # requests it still answers; None: every one


class ApiServer:
    """``async with ApiServer(crds=[...]) as api:`` serves on ``api.url`` until the block ends; ``record`` keeps every
    request, for ``requests()``."""

    def __init__(
        self,
        *,
        crds: Iterable[Mapping[str, Any]] = (),
        throttle_rps: float | None = None,
        bookmark_seconds: float = 60.0,
        record: bool = False,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.host, self.port = host, port
        self.bookmark_seconds = bookmark_seconds
        self.record = record
        self.url = ""
        self.counts: collections.Counter[str] = collections.Counter()  # requests received, by verb
        self.throttled = 0  # of them, answered 429
        self.throttled_users: collections.Counter[str] = collections.Counter()  # the same, by Authorization header
        self.errors: collections.Counter[str] = collections.Counter()  # the other errors, as "verb code resource"
        self.changed = asyncio.Condition()
        self.throttle_rps = throttle_rps
        self._buckets: dict[str, TokenBucket] = {}  # by user
        self._version = itertools.count(1)
        self._current = 0
        self._stores: dict[tuple[str, str, str], Store] = {}
        self._closing = False
        self._runner: web.AppRunner | None = None
        self._log: list[Request] = []
        self._injections: list[Injection] = []
        for resource in BUILTIN:
            self.serve(resource)
        for crd in crds:
            self.add_crd(crd)

    # --- For the bench and the tests ---

    @property
    def received(self) -> int:
        """Every request received (a watch counts once, when it starts)."""
        return sum(self.counts.values())

    def get(self, resource: str, namespace: str | None, name: str) -> Mapping[str, Any] | None:
        """The stored object (not to be changed), or None; ``resource`` as ``apps/v1/deployments``."""
        return self._store_by_key(resource).objects.get((namespace or "", name))

    def objects(self, resource: str) -> list[Mapping[str, Any]]:
        return list(self._store_by_key(resource).objects.values())

    def labelled(self, resource: str, namespace: str | None, label: str, value: str) -> list[Mapping[str, Any]]:
        """The objects (in the namespace, or all) with the label set to the value; O(their number)."""
        store = self._store_by_key(resource)
        keys = store.labelled.get((label, value), ())
        return [store.objects[key] for key in keys if namespace is None or key[0] == namespace]

    def requests(self, **match: str | None) -> list[Request]:
        """The requests received, in order, those matching ``Match(**match)`` (``record`` only)."""
        if not self.record:
            raise RuntimeError("requests are kept with ApiServer(record=True) only")
        matches = Match(**match)
        return [request for request in self._log if matches(request)]

    def inject(self, reply: Reply, *, times: int | None = None, **match: str | None) -> None:
        """Answer the next ``times`` requests matching ``Match(**match)`` (every one when None) with ``reply``, not as
        served; a request that several injections match gets the earliest one's."""
        self._injections.append(Injection(reply, Match(**match), times))

    def serve(self, resource: Resource) -> None:
        self._stores.setdefault((resource.group, resource.version, resource.plural), Store(resource))

    def add_crd(self, crd: Mapping[str, Any]) -> None:
        """Serve the CRD's resources, and store the CRD itself (kopf watches CRDs to rescan)."""
        for resource in crd_resources(crd):
            self.serve(resource)
        store = self._stores["apiextensions.k8s.io", "v1", "customresourcedefinitions"]
        self._create(store, None, copy(crd))

    def _store_by_key(self, key: str) -> Store:
        *group, version, plural = key.split("/")
        return self._stores["/".join(group), version, plural]

    async def __aenter__(self) -> ApiServer:
        app = web.Application(client_max_size=16 * 2**20)
        app.router.add_route("*", "/{path:.*}", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        # A socket of our own, bound before serving: its port is known even when the system picked it.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock).start()
        self.url = f"http://{self.host}:{self.port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._closing = True  # watches end their streams
        for store in self._stores.values():
            for watcher in store.watchers:
                watcher.wake.set()
        if self._runner is not None:
            await self._runner.cleanup()

    # --- Requests ---

    def _bucket(self, request: web.Request) -> TokenBucket:
        """The user's: API Priority and Fairness tells flows apart by user, here the bearer token (or none)."""
        user = request.headers.get("Authorization", "")
        bucket = self._buckets.get(user)
        if bucket is None:
            assert self.throttle_rps is not None
            bucket = self._buckets[user] = TokenBucket(self.throttle_rps)
        return bucket

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        route: Route | None = None
        unserved: ApiError | None = None
        try:
            route = self._route(request.path)
        except ApiError as error:
            unserved = error
        verb = "unknown" if unserved else "discovery" if route is None else self._verb(request, route)
        self.counts[verb] += 1
        try:
            reply = await self._note(request, route, verb)
            if reply is not None:
                return await reply.response()
            if unserved is not None:
                raise unserved
            if self.throttle_rps and verb != "watch" and not self._bucket(request).take():
                self.throttled += 1
                self.throttled_users[request.headers.get("Authorization", "")] += 1
                return _status(429, "Too many requests, please try again later.", retry_after=1)
            if route is None:
                return _json(self._discovery(request.path))
            if verb == "watch":
                return await self._watch(request, route)
            return await self._serve(request, route, verb)
        except ApiError as error:
            self.errors[f"{verb} {error.code} {_where(request, route)}"] += 1
            return _status(error.code, error.message, reason=error.reason)
        finally:
            if verb != "watch":
                async with self.changed:
                    self.changed.notify_all()

    async def _note(self, request: web.Request, route: Route | None, verb: str) -> Reply | None:
        """Keep the request (``record``); the reply injected for it, if any."""
        if not (self.record or self._injections):
            return None
        resource, namespace, name, subresource = (
            (route.resource, route.namespace, route.name, route.subresource) if route else (None, None, None, None)
        )
        received = Request(
            request.method,
            request.path,
            request.query,
            request.headers,
            await request.read(),
            verb,
            resource,
            namespace,
            name,
            subresource,
        )
        if self.record:
            self._log.append(received)
        for injection in self._injections:
            if injection.match(received):
                if injection.left is not None:
                    injection.left -= 1
                    if injection.left == 0:
                        self._injections.remove(injection)
                return injection.reply
        return None

    def _route(self, path: str) -> Route | None:
        """None for discovery; ApiError 404 for what is not served."""
        parts = [part for part in path.split("/") if part]
        if parts[:2] == ["api", "v1"] and len(parts) > 2:
            group, version, rest = "", "v1", parts[2:]
        elif parts[:1] == ["apis"] and len(parts) > 3:
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            return None
        namespace = None
        if rest[0] == "namespaces" and len(rest) >= 3 and (group, version, rest[2]) in self._stores:
            namespace, rest = rest[1], rest[2:]
        store = self._stores.get((group, version, rest[0]))
        if store is None or len(rest) > 3:
            raise ApiError(404, "the server could not find the requested resource")
        resource = store.resource
        subresource = rest[2] if len(rest) == 3 else None
        if subresource and not (
            (subresource == "status" and resource.status) or (subresource == "scale" and resource.scale)
        ):
            raise ApiError(404, "the server could not find the requested resource")
        if namespace is not None and not resource.namespaced:
            raise ApiError(404, "the server could not find the requested resource")
        return Route(resource, namespace, rest[1] if len(rest) > 1 else None, subresource)

    @staticmethod
    def _verb(request: web.Request, route: Route) -> str:
        method = request.method
        if route.name is None:
            if method == "GET":
                return "watch" if request.query.get("watch") in ("true", "1") else "list"
            return {"POST": "create", "DELETE": "deletecollection"}.get(method, method.lower())
        return {"GET": "get", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}.get(method, method.lower())

    async def _serve(self, request: web.Request, route: Route, verb: str) -> web.StreamResponse:
        store = self._stores[route.resource.group, route.resource.version, route.resource.plural]
        if route.resource.namespaced and route.name is not None and route.namespace is None:
            raise ApiError(404, "the server could not find the requested resource")
        if verb == "list":
            return self._list(store, route, request.query)
        if verb == "create":
            return _json(self._create(store, route.namespace, await _body(request)), 201)
        if route.name is None:
            raise ApiError(405, f"{request.method} is not supported on a collection")
        key = (route.namespace or "", route.name)
        current = store.objects.get(key)
        if verb == "get":
            if current is None:
                raise _not_found(route)
            return _json(self._scale_view(route, current) if route.subresource == "scale" else current)
        if verb == "delete":
            if current is None:
                raise _not_found(route)
            return _json(self._delete(store, key, current))
        if verb not in ("update", "patch"):
            raise ApiError(405, f"{request.method} is not supported")
        content_type = request.headers.get("Content-Type", "application/json").split(";")[0].strip()
        body = await request.read()
        if current is None:
            if verb == "patch" and content_type == APPLY_PATCH and route.subresource is None:
                obj = _parse(body, yaml_too=True)
                obj.setdefault("metadata", {})["name"] = route.name
                return _json(self._create(store, route.namespace, obj), 201)
            raise _not_found(route)
        if route.subresource == "scale":
            wanted = self._scale_view(route, current)
            scale = self._changed(wanted, verb, content_type, body)
            replicas = _get(scale, ("spec", "replicas"))
            assert route.resource.scale is not None
            new = copy(current)
            _set(new, route.resource.scale.spec_replicas, replicas)
            written = self._update(store, key, current, new, subresource=None)
            return _json(self._scale_view(route, written))
        new = self._changed(current, verb, content_type, body)
        if verb == "update" and (new.get("metadata") or {}).get("resourceVersion") not in (
            None,
            current["metadata"]["resourceVersion"],
        ):
            raise ApiError(
                409,
                f'Operation cannot be fulfilled on {route.resource.plural} "{route.name}": the '
                "object has been modified; please apply your changes to the latest version and try again",
            )
        return _json(self._update(store, key, current, new, subresource=route.subresource))

    @staticmethod
    def _changed(current: Mapping[str, Any], verb: str, content_type: str, body: bytes) -> dict[str, Any]:
        if verb == "update":
            result = _parse(body)
        elif content_type == JSON_PATCH:
            result = json_patch(current, _parse(body))
        elif content_type in (MERGE_PATCH, STRATEGIC_MERGE_PATCH):
            result = merge_patch(current, _parse(body))
        elif content_type == APPLY_PATCH:
            result = merge_patch(current, _parse(body, yaml_too=True))
        else:
            raise ApiError(415, f"the body of the request was in an unknown format: {content_type}")
        if not isinstance(result, dict):
            raise ApiError(422, "the patched object is not an object")
        return copy(result) if verb == "patch" and content_type != JSON_PATCH else result  # never shared

    # --- Writes: every one through _commit ---

    def _commit(
        self, store: Store, key: tuple[str, str], old: Mapping[str, Any] | None, new: dict[str, Any], kind: str
    ) -> dict[str, Any]:
        self._current = version = next(self._version)
        new["metadata"]["resourceVersion"] = str(version)
        store.put(key, None if kind == "DELETED" else new)
        store.record(Change(version, kind, old, new))
        return new

    def _create(self, store: Store, namespace: str | None, obj: Any) -> dict[str, Any]:
        resource = store.resource
        if not isinstance(obj, dict):
            raise ApiError(400, "the body is not an object")
        metadata = obj.setdefault("metadata", {})
        if resource.namespaced:
            if namespace is None or metadata.get("namespace", namespace) != namespace:
                raise ApiError(400, "the namespace of the object does not match the namespace of the request")
            metadata["namespace"] = namespace
        if not metadata.get("name"):
            if not metadata.get("generateName"):
                raise ApiError(422, "name or generateName is required")
            # A suffix not taken (the real server retries a taken one too).
            while (namespace or "", name := metadata["generateName"] + uuid.uuid4().hex[:5]) in store.objects:
                pass
            metadata["name"] = name
        key = (namespace or "", metadata["name"])
        if key in store.objects:
            raise ApiError(409, f'{resource.plural} "{metadata["name"]}" already exists', reason="AlreadyExists")
        obj["apiVersion"], obj["kind"] = resource.api_version, resource.kind
        if resource.status:  # a create, like any write to the object, ignores its status
            obj.pop("status", None)
        metadata.update(uid=str(uuid.uuid4()), creationTimestamp=_now(), generation=1)
        for server_side in ("resourceVersion", "deletionTimestamp", "managedFields"):
            metadata.pop(server_side, None)
        return self._commit(store, key, None, obj, "ADDED")

    def _update(
        self,
        store: Store,
        key: tuple[str, str],
        current: Mapping[str, Any],
        new: dict[str, Any],
        *,
        subresource: str | None,
    ) -> Mapping[str, Any]:
        """The stored object after the write: ``current`` itself when it changes nothing."""
        resource = store.resource
        if subresource == "status":  # only the status changes
            status = new.get("status")
            new = copy(current)
            new.pop("status", None)
            if status is not None:
                new["status"] = status
        else:
            if resource.status:
                new.pop("status", None)
                if "status" in current:
                    new["status"] = current["status"]
            new["apiVersion"], new["kind"] = resource.api_version, resource.kind
            metadata = new.setdefault("metadata", {})
            for fixed in ("name", "namespace", "uid", "creationTimestamp", "generation", "deletionTimestamp"):
                if fixed in current["metadata"]:
                    metadata[fixed] = current["metadata"][fixed]
                else:
                    metadata.pop(fixed, None)
            if new.get("spec") != current.get("spec"):
                metadata["generation"] = current["metadata"].get("generation", 0) + 1
        new["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
        if new == current:
            return current
        if current["metadata"].get("deletionTimestamp") and not new["metadata"].get("finalizers"):
            return self._commit(store, key, current, new, "DELETED")  # the last finalizer is gone
        return self._commit(store, key, current, new, "MODIFIED")

    def _delete(self, store: Store, key: tuple[str, str], current: Mapping[str, Any]) -> dict[str, Any]:
        new = copy(current)
        if current["metadata"].get("finalizers"):  # marked; deleted once the finalizers are removed
            if current["metadata"].get("deletionTimestamp"):
                return new
            new["metadata"].update(deletionTimestamp=_now(), deletionGracePeriodSeconds=0)
            return self._commit(store, key, current, new, "MODIFIED")
        return self._commit(store, key, current, new, "DELETED")

    # --- Reads ---

    def _list(self, store: Store, route: Route, query: Mapping[str, str]) -> web.Response:
        selects = selector(query)
        keys = sorted(store.objects)
        after = query.get("continue")
        if after:
            try:
                start = tuple(orjson.loads(base64.urlsafe_b64decode(after)))
            except ValueError:
                raise ApiError(400, "invalid continue token") from None
            keys = keys[bisect.bisect_right(keys, start) :]
        try:
            limit = int(query.get("limit") or 0)
        except ValueError:
            raise ApiError(400, "invalid limit") from None
        items, token = [], ""
        for key in keys:
            if route.namespace is not None and key[0] != route.namespace:
                continue
            obj = store.objects[key]
            if not selects(obj):
                continue
            if limit and len(items) == limit:
                token = base64.urlsafe_b64encode(orjson.dumps(list(_last_key(items)))).decode()
                break
            items.append(obj)
        resource = route.resource
        metadata: dict[str, Any] = {"resourceVersion": str(self._current)}
        if token:
            metadata["continue"] = token
        return _json(
            {"apiVersion": resource.api_version, "kind": f"{resource.kind}List", "metadata": metadata, "items": items}
        )

    async def _watch(self, request: web.Request, route: Route) -> web.StreamResponse:
        store = self._stores[route.resource.group, route.resource.version, route.resource.plural]
        query = request.query
        watcher = Watcher(route.namespace, selector(query))
        bookmarks = query.get("allowWatchBookmarks") in ("true", "1")
        since = query.get("resourceVersion") or "0"
        initial = query.get("sendInitialEvents") in ("true", "1")
        # Registered and caught up in one step (no await between): no change can fall in between.
        if since == "0" or initial:
            for obj in store.objects.values():
                watcher.offer(Change(0, "ADDED", None, obj))
            if initial and bookmarks:
                marker = {"resourceVersion": str(self._current), "annotations": {"k8s.io/initial-events-end": "true"}}
                watcher.lines.append(self._bookmark(route.resource, marker))
        else:
            try:
                changes = store.since(int(since))
            except ValueError:
                raise ApiError(400, f"invalid resourceVersion {since!r}") from None
            if changes is None:
                return _status(410, f"too old resource version: {since} ({store.dropped})", reason="Expired")
            for change in changes:
                watcher.offer(change)
        store.watchers.add(watcher)
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        try:
            await response.prepare(request)
            timeout = float(query.get("timeoutSeconds") or 0) or None
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout if timeout else None
            next_bookmark = loop.time() + self.bookmark_seconds
            while not self._closing:
                watcher.wake.clear()  # before looking: what is offered from now on sets it again
                if watcher.lines:
                    lines, watcher.lines = watcher.lines, []
                    await response.write(b"".join(lines))
                    continue
                now = loop.time()
                if deadline is not None and now >= deadline:
                    break
                if now >= next_bookmark:
                    next_bookmark = now + self.bookmark_seconds
                    if bookmarks:
                        watcher.lines.append(self._bookmark(route.resource, {"resourceVersion": str(self._current)}))
                        continue
                if request.transport is None or request.transport.is_closing():
                    break
                wait = min(next_bookmark, deadline or next_bookmark) - now
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await watcher.wake.wait()
            await response.write_eof()
        except (ConnectionError, asyncio.CancelledError):
            pass  # the client went away
        finally:
            store.watchers.discard(watcher)
        return response

    @staticmethod
    def _bookmark(resource: Resource, metadata: Mapping[str, Any]) -> bytes:
        return event_line("BOOKMARK", {"apiVersion": resource.api_version, "kind": resource.kind, "metadata": metadata})

    def _scale_view(self, route: Route, obj: Mapping[str, Any]) -> dict[str, Any]:
        scale = route.resource.scale
        assert scale is not None
        metadata = obj["metadata"]
        status: dict[str, Any] = {"replicas": _get(obj, scale.status_replicas) or 0}
        if scale.selector is not None and _get(obj, scale.selector) is not None:
            status["selector"] = _get(obj, scale.selector)
        return {
            "apiVersion": "autoscaling/v1",
            "kind": "Scale",
            "metadata": {
                k: metadata[k]
                for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")
                if k in metadata
            },
            # An unset spec replicas path reads as 0 here (the real server refuses to GET such a scale).
            "spec": {"replicas": _get(obj, scale.spec_replicas) or 0},
            "status": status,
        }

    def _discovery(self, path: str) -> dict[str, Any]:
        parts = [part for part in path.split("/") if part]
        resources = [store.resource for store in self._stores.values()]
        if parts == ["version"]:
            return {"major": "1", "minor": "34", "gitVersion": "v1.34.0-bench", "platform": "linux/amd64"}
        if parts == ["api"]:
            return {
                "kind": "APIVersions",
                "versions": ["v1"],
                "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": self.url}],
            }
        if parts == ["api", "v1"]:
            return _resource_list("v1", [r for r in resources if not r.group])
        groups: dict[str, list[str]] = {}
        for resource in resources:
            if resource.group and resource.version not in groups.setdefault(resource.group, []):
                groups[resource.group].append(resource.version)
        if parts == ["apis"]:
            return {
                "kind": "APIGroupList",
                "apiVersion": "v1",
                "groups": [_group(name, versions) for name, versions in sorted(groups.items())],
            }
        if len(parts) == 2 and parts[0] == "apis" and parts[1] in groups:
            return {"kind": "APIGroup", "apiVersion": "v1", **_group(parts[1], groups[parts[1]])}
        if len(parts) == 3 and parts[0] == "apis" and parts[2] in groups.get(parts[1], ()):
            group_version = f"{parts[1]}/{parts[2]}"
            return _resource_list(group_version, [r for r in resources if r.api_version == group_version])
        raise ApiError(404, "the server could not find the requested resource")


def _where(request: web.Request, route: Route | None) -> str:
    """The resource (and subresource) a request was about, for the error counts."""
    if route is None:
        return request.path
    return route.resource.key + (f"/{route.subresource}" if route.subresource else "")


def _last_key(items: list[Mapping[str, Any]]) -> tuple[str, str]:
    metadata = items[-1]["metadata"]
    return metadata.get("namespace", ""), metadata["name"]


def _group(name: str, versions: list[str]) -> dict[str, Any]:
    listed = [{"groupVersion": f"{name}/{version}", "version": version} for version in versions]
    return {"name": name, "versions": listed, "preferredVersion": listed[0]}


def _resource_list(group_version: str, resources: list[Resource]) -> dict[str, Any]:
    listed: list[dict[str, Any]] = []
    for resource in resources:
        listed.append(
            {
                "name": resource.plural,
                "singularName": resource.singular or resource.kind.lower(),
                "namespaced": resource.namespaced,
                "kind": resource.kind,
                "verbs": VERBS,
                "shortNames": list(resource.short_names),
                "categories": list(resource.categories),
            }
        )
        for sub, kind, group, version in _subresources(resource):
            listed.append(
                {
                    "name": f"{resource.plural}/{sub}",
                    "singularName": "",
                    "namespaced": resource.namespaced,
                    "kind": kind,
                    "group": group,
                    "version": version,
                    "verbs": ["get", "patch", "update"],
                }
            )
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": listed}


def _subresources(resource: Resource) -> Iterator[tuple[str, str, str, str]]:
    if resource.status:
        yield "status", resource.kind, resource.group, resource.version
    if resource.scale:
        yield "scale", "Scale", "autoscaling", "v1"


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _not_found(route: Route) -> ApiError:
    return ApiError(404, f'{route.resource.plural}.{route.resource.group or "core"} "{route.name}" not found')


def _parse(body: bytes, *, yaml_too: bool = False) -> Any:
    try:
        return orjson.loads(body or b"{}")
    except orjson.JSONDecodeError:
        if not yaml_too:
            raise ApiError(400, "the body is not JSON") from None
    try:
        return yaml.safe_load(body)
    except yaml.YAMLError:
        raise ApiError(400, "the body is neither JSON nor YAML") from None


async def _body(request: web.Request) -> Any:
    return _parse(await request.read())


def _json(body: Any, code: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=code, content_type="application/json")


def _status(code: int, message: str, *, reason: str | None = None, retry_after: int | None = None) -> web.Response:
    body: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason or STATUS_REASONS.get(code, "InternalError"),
        "code": code,
    }
    headers = {}
    if retry_after is not None:
        body["details"] = {"retryAfterSeconds": retry_after}
        headers["Retry-After"] = str(retry_after)
    return web.Response(body=orjson.dumps(body), status=code, content_type="application/json", headers=headers)


def write_kubeconfig(path: Path, server: str, token: str) -> Path:
    """A kubeconfig whose only context is ``server``, as the user ``token`` (any token is accepted; throttling tells
    users apart by it)."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "emulator",
        "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "emulator"}}],
        "clusters": [{"name": "emulator", "cluster": {"server": server}}],
        "users": [{"name": "emulator", "user": {"token": token}}],
    }
    path.write_text(yaml.safe_dump(config))
    return path


async def _serve_forever(crds: list[dict[str, Any]], throttle_rps: float | None, port: int) -> None:
    async with ApiServer(crds=crds, throttle_rps=throttle_rps, port=port) as api:
        print(f"serving the Kubernetes API on {api.url}", flush=True)
        await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: any free one)")
    parser.add_argument("--crd", action="append", default=[], help="a CustomResourceDefinition YAML file to serve")
    parser.add_argument("--throttle-rps", type=float, help="answer requests above this rate 429 (watches exempt)")
    args = parser.parse_args()
    crds = [yaml.safe_load(Path(path).read_text()) for path in args.crd]
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve_forever(crds, args.throttle_rps, args.port))


if __name__ == "__main__":
    main()
