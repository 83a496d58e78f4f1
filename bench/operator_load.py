"""``make bench-operator``: the real operator (``kubeserve-operator run``, a subprocess) against an in-memory
Kubernetes API (``bench/apiserver.py``, the emulator the operator's tests use too) holding many InferenceServices.

It measures what a platform team pays for the operator: how long N InferenceServices created at once take to be
reconciled (children applied, ``status.observedGeneration`` current), what the operator asks of the API server and
what it costs in CPU while nothing changes, its memory, and how fast one new object and one deleted child are
handled. Every request counted is one the API server received, so the numbers are the API server's view.

``--throttle-rps R`` makes the API server answer each user's requests above R per second with 429 and
``Retry-After: 1`` (watches exempt), as API Priority and Fairness does: the operator must still reconcile everything.
The bench's own requests are another user's, and wait out their 429s as kubectl does.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

# PYTHONSAFEPATH keeps the script's folder off sys.path (the repository root holds `operator/`); add bench/ only.
sys.path.insert(0, str(Path(__file__).resolve().parent))

import aiohttp
import yaml
from apiserver import ApiServer, write_kubeconfig
from kubeserve.operator.naming import LABEL_ISVC

REPO = Path(__file__).resolve().parents[1]
CRD_PATH = REPO / "crds" / "inferenceservices.yaml"
ISVC_RESOURCE = "serving.kubeserve.io/v1alpha1/inferenceservices"

OPERATOR = str(Path(sys.executable).with_name("kubeserve-operator"))
NAMESPACE = "bench"
ISVC_PATH = f"/apis/serving.kubeserve.io/v1alpha1/namespaces/{NAMESPACE}/inferenceservices"
SERVICES = "v1/services"
DEPLOYMENTS = "apps/v1/deployments"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def isvc(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "serving.kubeserve.io/v1alpha1",
        "kind": "InferenceService",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {"model": {"version": "1", "uri": "file:///opt/kubeserve/samples/mlp.onnx"}},
    }


def operator_env(kubeconfig: Path, home: str) -> dict[str, str]:
    """The operator's environment: the in-memory API server, standalone, quiet, no health port."""
    env = {
        **os.environ,
        "PYTHONSAFEPATH": "1",
        "KUBECONFIG": str(kubeconfig),
        "HOME": home,
        "KUBESERVE_OPERATOR_STANDALONE": "true",
        "KUBESERVE_OPERATOR_LOG_LEVEL": "warning",
        "KUBESERVE_OPERATOR_HEALTH_PORT": "0",
        "KUBESERVE_OPERATOR_METRICS_PORT": "0",
    }
    env.pop("KUBERNETES_SERVICE_HOST", None)
    return env


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Bench:
    def __init__(self, api: ApiServer) -> None:
        self.api = api
        self.url = api.url

    def stored(self, resource: str, name: str) -> Any:
        return self.api.get(resource, NAMESPACE, name)

    def deployments(self, name: str) -> list[Any]:
        """The InferenceService's Deployments, by its label (they are named for its revisions)."""
        return self.api.labelled(DEPLOYMENTS, NAMESPACE, LABEL_ISVC, name)

    def reconciled(self, name: str) -> bool:
        """Children applied (its Service, named as it, and a Deployment) and status written for the object's current
        generation."""
        found = self.stored(ISVC_RESOURCE, name)
        if found is None or self.stored(SERVICES, name) is None or not self.deployments(name):
            return False
        generation = (found.get("metadata") or {}).get("generation")
        conditions = (found.get("status") or {}).get("conditions") or []
        return bool(conditions) and all(c.get("observedGeneration") == generation for c in conditions)

    def requests(self) -> int:
        """Every request the API server has received (a watch counts once, when it starts; a 429 counts too)."""
        return self.api.received

    def all_reconciled(self, names: list[str]) -> Any:
        """A predicate for ``until``: every one of ``names`` reconciled. Each is checked until it is, then no
        more (nothing in the bench undoes a reconcile), so a check after each write costs O(1), not O(names)."""
        pending = collections.deque(names)

        def check() -> bool:
            while pending and self.reconciled(pending[0]):
                pending.popleft()
            return not pending

        return check

    async def until(self, predicate: Any, within: float) -> float:
        """Seconds until ``predicate()`` holds (checked after every request the API server answers)."""
        started = time.perf_counter()
        async with asyncio.timeout(within), self.api.changed:
            await self.api.changed.wait_for(predicate)
        return time.perf_counter() - started


async def run(args: argparse.Namespace) -> bool:
    """Whether the measurement ran to the end."""
    failed = False
    crd = yaml.safe_load(CRD_PATH.read_text())
    async with ApiServer(crds=[crd], throttle_rps=args.throttle_rps) as api:
        bench = Bench(api)
        with tempfile.TemporaryDirectory() as home:
            env = operator_env(write_kubeconfig(Path(home) / "kubeconfig", api.url, token="bench"), home)
            log_path = Path(args.operator_log) if args.operator_log else Path(home) / "operator.log"
            with log_path.open("wb") as log:
                operator = await asyncio.create_subprocess_exec(OPERATOR, "run", env=env, stdout=log, stderr=log)
            try:
                await measure(bench, operator.pid, args)
            except Exception:
                traceback.print_exc()
                failed = True
            finally:
                operator.terminate()
                await operator.wait()
    return not failed


async def measure(bench: Bench, pid: int, args: argparse.Namespace) -> None:
    count = args.objects
    async with aiohttp.ClientSession(bench.url) as session:
        # The operator is up once it has reconciled a first object.
        await send(session, "POST", ISVC_PATH, isvc("warm-up"))
        await bench.until(lambda: bench.reconciled("warm-up"), within=120)
        rss_before = rss_mib(pid)

        names = [f"model-{i:04d}" for i in range(count)]
        semaphore = asyncio.Semaphore(64)

        async def create(name: str) -> None:
            async with semaphore:
                await send(session, "POST", ISVC_PATH, isvc(name))

        throttling = f", throttled to {args.throttle_rps:g} requests/s" if args.throttle_rps else ""
        print(f"operator against an in-memory API server{throttling}, {count} InferenceServices in one namespace")
        print("| measure | value |\n|---|---|")
        cpu_start, requests_start, throttled_start = cpu_seconds(pid), bench.requests(), bench.api.throttled
        verbs_start = bench.api.counts.copy()
        started = time.perf_counter()
        await asyncio.gather(*(create(name) for name in names))
        created = time.perf_counter() - started
        all_reconciled = bench.all_reconciled(names)
        reconciled = await timed(bench, all_reconciled, args.timeout, created)
        busy_cpu = cpu_seconds(pid) - cpu_start
        busy_requests = bench.requests() - requests_start
        print(f"| {count} created at once: all reconciled after | {reconciled} |")
        print(
            f"| ... API requests while reconciling (the creates too) | {busy_requests} "
            f"({busy_requests / count:.1f} per object) |"
        )
        print(f"| ... operator CPU while reconciling | {busy_cpu:.1f} s ({busy_cpu / count * 1e3:.0f} ms per object) |")
        by_verb = ", ".join(f"{verb} {n}" for verb, n in (bench.api.counts - verbs_start).most_common())
        print(f"| ... by verb | {by_verb} |")
        if args.throttle_rps:
            throttled = bench.api.throttled - throttled_start
            still = "all reconciled" if all_reconciled() else "NOT all reconciled"
            print(f"| ... of them answered 429 (Retry-After: 1) | {throttled}, and {still} |")

        # Let what is in flight settle (status of the last objects), then measure a quiet period.
        await asyncio.sleep(args.settle)
        cpu_idle_start, requests_idle_start = cpu_seconds(pid), bench.requests()
        await asyncio.sleep(args.idle)
        idle_cpu = cpu_seconds(pid) - cpu_idle_start
        idle_requests = bench.requests() - requests_idle_start
        print(f"| idle ({args.idle:.0f} s): API requests per second | {idle_requests / args.idle:.2f} |")
        print(f"| idle: operator CPU (share of one core) | {idle_cpu / args.idle * 100:.1f}% |")
        print(f"| operator RSS: 1 object, then {count + 1} | {rss_before:.0f} MiB, {rss_mib(pid):.0f} MiB |")

        # One change each: a new InferenceService, and a child deleted behind the operator's back.
        await send(session, "POST", ISVC_PATH, isvc("latecomer"))
        new_object = await timed(bench, lambda: bench.deployments("latecomer"), 60)
        print(f"| one new InferenceService: its Deployment after | {new_object} |")
        victim = names[count // 2]
        await send(session, "DELETE", f"/api/v1/namespaces/{NAMESPACE}/services/{victim}")
        repaired = await timed(bench, lambda: bench.stored(SERVICES, victim), args.repair_timeout)
        print(f"| a deleted Service: back after | {repaired} |")


async def send(session: aiohttp.ClientSession, method: str, path: str, body: Any = None) -> None:
    """One request as kubectl sends it: after a 429, again once its Retry-After has passed (the bench is a user of
    its own, throttled apart from the operator, as API Priority and Fairness keeps users' flows apart)."""
    while True:
        async with session.request(method, path, json=body) as response:
            if response.status != 429:
                response.raise_for_status()
                return
            await asyncio.sleep(float(response.headers.get("Retry-After", "1")))


async def timed(bench: Bench, predicate: Any, within: float, already: float = 0.0) -> str:
    """How long until ``predicate()`` holds, for the table."""
    try:
        return f"{already + await bench.until(predicate, within):.2f} s"
    except TimeoutError:
        return f"not within {within:.0f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--objects", type=int, default=1000, help="InferenceServices to create at once")
    parser.add_argument("--idle", type=float, default=60.0, help="seconds of idle measured")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds between the last reconcile and idle")
    parser.add_argument("--timeout", type=float, default=600.0, help="longest wait for all to reconcile")
    parser.add_argument("--operator-log", help="file for the operator's log (default: discarded)")
    parser.add_argument("--repair-timeout", type=float, default=90.0, help="longest wait for a deleted child")
    parser.add_argument(
        "--throttle-rps",
        type=float,
        help="API requests per second above which the API server "
        "answers 429 with Retry-After: 1, as API Priority and Fairness does (watches exempt)",
    )
    if not asyncio.run(run(parser.parse_args())):
        sys.exit(1)


if __name__ == "__main__":
    main()
