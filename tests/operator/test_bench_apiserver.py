"""The in-memory API server (``bench/apiserver.py``) with the real operator, a subprocess, as ``make bench-operator``
runs them: it reconciles InferenceServices there and repairs a deleted child, throttled (429, Retry-After) or not.

Real time (no looptime: the operator is another process); every wait is on the server's ``changed`` condition,
notified after each request, with a generous limit that only a failure reaches.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import yaml

# bench/ only (never the repository root, which holds a folder named `operator`).
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from apiserver import ApiServer, Reply, write_kubeconfig
from operator_load import (
    CRD_PATH,
    ISVC_PATH,
    ISVC_RESOURCE,
    NAMESPACE,
    OPERATOR,
    SERVICES,
    Bench,
    isvc,
    operator_env,
    send,
)

NAMES = [f"model-{i}" for i in range(5)]
WITHIN = 60  # seconds: only reached when something is wrong


@contextlib.asynccontextmanager
async def operator_against(tmp_path: Path, **server: float) -> AsyncIterator[tuple[Bench, aiohttp.ClientSession]]:
    """The API server, the operator (``kubeserve-operator run``) against it, and a session for the test's own
    requests; the operator's log is shown when the block fails."""
    crd = yaml.safe_load(CRD_PATH.read_text())
    async with ApiServer(crds=[crd], **server) as api, aiohttp.ClientSession(api.url) as session:
        env = operator_env(write_kubeconfig(tmp_path / "kubeconfig", api.url, token="bench"), str(tmp_path))
        log_path = tmp_path / "operator.log"
        with log_path.open("wb") as log:
            operator = await asyncio.create_subprocess_exec(OPERATOR, "run", env=env, stdout=log, stderr=log)
        try:
            yield Bench(api), session
        except BaseException:
            print(log_path.read_text()[-5000:])
            raise
        finally:
            operator.terminate()
            await operator.wait()


async def create_all(bench: Bench, session: aiohttp.ClientSession, names: list[str]) -> None:
    """Create the InferenceServices at once; return once each has its Deployment and Service, and a status whose
    conditions were all observed at its current generation (``Bench.reconciled``)."""
    await asyncio.gather(*(send(session, "POST", ISVC_PATH, isvc(name)) for name in names))
    await bench.until(lambda: all(bench.reconciled(name) for name in names), within=WITHIN)
    for name in names:
        status = bench.stored(ISVC_RESOURCE, name)["status"]
        assert {c["type"] for c in status["conditions"]} >= {"Ready"}
        assert bench.stored(SERVICES, name) is not None and bench.deployments(name)


async def test_operator_reconciles_and_repairs(tmp_path: Path) -> None:
    async with operator_against(tmp_path) as (bench, session):
        await create_all(bench, session, NAMES)
        for name in NAMES:
            (deployment, *_) = bench.deployments(name)
            assert deployment["metadata"]["ownerReferences"][0]["name"] == name
            assert bench.stored(SERVICES, name)["spec"]["selector"]

        # A child deleted behind the operator's back comes back.
        victim = NAMES[2]
        first_uid = bench.stored(SERVICES, victim)["metadata"]["uid"]
        await send(session, "DELETE", f"/api/v1/namespaces/{NAMESPACE}/services/{victim}")
        assert bench.stored(SERVICES, victim) is None
        await bench.until(lambda: bench.stored(SERVICES, victim) is not None, within=WITHIN)
        assert bench.stored(SERVICES, victim)["metadata"]["uid"] != first_uid
        assert bench.api.counts["unknown"] == 0, f"the operator asked for what is not served: {bench.api.errors}"


async def test_throttled_server_answers_429_and_operator_still_reconciles(tmp_path: Path) -> None:
    # A low rate: the operator's start alone (discovery, a list per watched resource) is more than a second's worth.
    # Two objects, not five: each 429 the operator gets on its own requests costs it a second or more of back-off.
    async with operator_against(tmp_path, throttle_rps=10) as (bench, session):
        # A burst of the test's own: past the bucket's one second of burst, 429 with Retry-After, as APF answers.
        answers = []
        for _ in range(20):
            async with session.get(f"/api/v1/namespaces/{NAMESPACE}/services") as response:
                answers.append((response.status, response.headers.get("Retry-After"), await response.json()))
        throttled = [(retry_after, body) for status, retry_after, body in answers if status == 429]
        assert throttled, "no 429 in a burst of 20 requests at 10 per second"
        retry_after, body = throttled[0]
        assert retry_after == "1"
        assert (body["kind"], body["code"], body["reason"]) == ("Status", 429, "TooManyRequests")

        await create_all(bench, session, NAMES[:2])
        assert bench.api.throttled_users["Bearer bench"] > 0, "the operator was never throttled: this proves nothing"


async def test_server_semantics_the_operator_relies_on() -> None:
    """What kopf and the operator count on, request by request (no operator)."""
    crd = yaml.safe_load(CRD_PATH.read_text())
    async with ApiServer(crds=[crd]) as api, aiohttp.ClientSession(api.url) as session:

        async def call(method: str, path: str, body: object = None, content_type: str = "") -> tuple[int, dict]:
            headers = {"Content-Type": content_type} if content_type else {}
            data = json.dumps(body).encode() if body is not None else None
            async with session.request(method, path, data=data, headers=headers) as response:
                return response.status, await response.json()

        path = f"{ISVC_PATH}/m"
        status, created = await call("POST", ISVC_PATH, isvc("m"), "application/json")
        assert status == 201 and created["metadata"]["generation"] == 1 and created["metadata"]["uid"]
        assert (await call("POST", ISVC_PATH, isvc("m"), "application/json"))[0] == 409
        version = created["metadata"]["resourceVersion"]

        # A status write: a new resourceVersion, the same generation; a spec change: the next generation.
        merge = "application/merge-patch+json"
        _, patched = await call("PATCH", f"{path}/status", {"status": {"url": "u"}, "spec": {"replicas": 9}}, merge)
        assert patched["metadata"]["generation"] == 1 and patched["status"] == {"url": "u"}
        assert "replicas" not in patched["spec"] and patched["metadata"]["resourceVersion"] != version
        _, scaled = await call("PATCH", f"{path}/scale", {"spec": {"replicas": 3}}, merge)
        assert (scaled["kind"], scaled["spec"]["replicas"]) == ("Scale", 3)
        assert api.get(ISVC_RESOURCE, NAMESPACE, "m")["metadata"]["generation"] == 2
        # The same write again changes nothing, not even the resourceVersion.
        unchanged = api.get(ISVC_RESOURCE, NAMESPACE, "m")["metadata"]["resourceVersion"]
        await call("PATCH", f"{path}/scale", {"spec": {"replicas": 3}}, merge)
        assert api.get(ISVC_RESOURCE, NAMESPACE, "m")["metadata"]["resourceVersion"] == unchanged

        # kopf's optimistic JSON patch: a stale resourceVersion fails its test with 422.
        stale = [{"op": "test", "path": "/metadata/resourceVersion", "value": version}]
        stale.append({"op": "add", "path": "/metadata/finalizers", "value": ["f"]})
        assert (await call("PATCH", path, stale, "application/json-patch+json"))[0] == 422

        # Server-side apply creates; a watch from a resourceVersion replays what came after it.
        apply = "application/apply-patch+yaml"
        service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s", "labels": {"a": "b"}}}
        services = f"/api/v1/namespaces/{NAMESPACE}/services"
        status, applied = await call("PATCH", f"{services}/s?fieldManager=t&force=true", service, apply)
        assert status == 201
        assert (await call("DELETE", f"{services}/s"))[0] == 200
        assert (await call("DELETE", f"{services}/s"))[0] == 404
        since = int(applied["metadata"]["resourceVersion"]) - 1
        query = f"watch=true&resourceVersion={since}&labelSelector=a%3Db"
        async with session.get(f"/api/v1/services?{query}") as response:
            events = [json.loads(await response.content.readline()) for _ in range(2)]
        assert [event["type"] for event in events] == ["ADDED", "DELETED"]


async def test_the_tests_tooling_keeps_requests_and_answers_injected_replies() -> None:
    """What the operator's tests use: the requests kept, filtered; replies injected for the next matching requests,
    the earliest injection first, then served as usual."""
    async with ApiServer(record=True) as api, aiohttp.ClientSession(api.url) as session:
        services = f"/api/v1/namespaces/{NAMESPACE}/services"
        api.inject(Reply(500), times=1, method="POST", resource=SERVICES)
        throttled = Reply(429, body={"kind": "Status"}, headers={"Retry-After": "7"})
        api.inject(throttled, times=1, method="POST", resource=SERVICES)
        answers = []
        for user in ("a", "b", "a"):
            body = {"metadata": {"name": "s"}}
            async with session.post(services, json=body, headers={"User-Agent": user}) as response:
                answers.append((response.status, response.headers.get("Retry-After"), await response.read()))
        async with session.get(f"{services}/s") as response:
            assert response.status == 200

        assert answers[:2] == [(500, None, b""), (429, "7", b'{"kind":"Status"}')]
        assert answers[2][0] == 201
        posts = api.requests(method="POST", resource=SERVICES)
        assert [(r.verb, r.namespace, r.body["metadata"]["name"]) for r in posts] == [("create", NAMESPACE, "s")] * 3
        assert [r.method for r in api.requests(user_agent="a")] == ["POST", "POST"]
        assert [r.verb for r in api.requests(name="s")] == ["get"]


async def test_a_canary_steps_on_when_its_pause_ends_on_the_operators_own_timer(tmp_path: Path) -> None:
    """The controller's rollout timer on a real event loop, in real time: once the canary's pod is ready, nothing
    writes to the API server until the step's 1 s pause is over and the operator itself moves to 100%."""
    name, merge = "canary", {"Content-Type": "application/merge-patch+json"}
    body = isvc(name)
    body["spec"].update(replicas=2, rollout={"steps": [{"weight": 50, "pauseSeconds": 1}]})

    async with operator_against(tmp_path) as (bench, session):

        def replicas() -> dict[str, int]:
            return {d["metadata"]["name"]: d["spec"]["replicas"] for d in bench.deployments(name)}

        def phase() -> str | None:
            return ((bench.stored(ISVC_RESOURCE, name).get("status") or {}).get("rollout") or {}).get("phase")

        async def ready(deployment: str, pods: int) -> None:
            status = {"replicas": pods, "readyReplicas": pods, "updatedReplicas": pods, "availableReplicas": pods}
            path = f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments/{deployment}/status"
            async with session.patch(path, data=json.dumps({"status": status}), headers=merge) as response:
                response.raise_for_status()

        await send(session, "POST", ISVC_PATH, body)
        await bench.until(lambda: len(replicas()) == 1, within=WITHIN)
        (v1,) = replicas()
        await ready(v1, 2)
        await bench.until(lambda: phase() == "Succeeded", within=WITHIN)

        version_2 = json.dumps({"spec": {"model": {"version": "2"}}})
        async with session.patch(f"{ISVC_PATH}/{name}", data=version_2, headers=merge) as response:
            response.raise_for_status()
        await bench.until(lambda: len(replicas()) == 2, within=WITHIN)
        (v2,) = set(replicas()) - {v1}
        await bench.until(lambda: replicas() == {v1: 2, v2: 1}, within=WITHIN)
        await ready(v2, 1)
        await bench.until(lambda: replicas() == {v1: 1, v2: 1}, within=WITHIN)
        # The pause: only the operator's timer can end it.
        await bench.until(lambda: replicas()[v2] == 2, within=WITHIN)
        assert phase() == "Progressing"  # at 100%, until its pods are ready
