"""``make bench-operator``: the real operator (``kubeserve-operator run``, a subprocess) against an in-memory
Kubernetes API (kmock's emulator, the one the operator's tests use) holding many InferenceServices.

It measures what a platform team pays for the operator: how long N InferenceServices created at once take to be
reconciled (children applied, ``status.observedGeneration`` current), what the operator asks of the API server and
what it costs in CPU while nothing changes, its memory, and how fast one new object and one deleted child are
handled. Every request counted is one the emulator received, so the numbers are the API server's view.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import aiohttp
import kmock

REPO = Path(__file__).resolve().parents[1]
# The in-memory API server of the operator's tests (server-side apply, resource versions, generations).
sys.path.insert(0, str(REPO / "tests" / "operator"))
from conftest import ISVC_RESOURCE, ApplyingEmulator, serve_operator_resources, write_kubeconfig  # noqa: E402

OPERATOR = str(Path(sys.executable).with_name("kubeserve-operator"))
NAMESPACE = "bench"
ISVC_PATH = f"/apis/serving.kubeserve.io/v1alpha1/namespaces/{NAMESPACE}/inferenceservices"
SERVICES = "v1/services"
CHILDREN = (SERVICES, "apps/v1/deployments")  # named as the InferenceService
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def isvc(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "serving.kubeserve.io/v1alpha1",
        "kind": "InferenceService",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {"model": {"version": "1", "uri": "file:///opt/kubeserve/samples/mlp.onnx"}},
    }


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Bench:
    def __init__(self, api: ApplyingEmulator, url: str) -> None:
        self.api = api
        self.url = url

    def stored(self, resource: str, name: str) -> Any:
        try:
            found = self.api.objects[resource, NAMESPACE, name]
        except KeyError:
            return None
        return None if found.deleted else found

    def reconciled(self, name: str) -> bool:
        """Children applied and status written for the object's current generation."""
        found = self.stored(ISVC_RESOURCE, name)
        if found is None or any(self.stored(resource, name) is None for resource in CHILDREN):
            return False
        generation = (found.get("metadata") or {}).get("generation")
        conditions = (found.get("status") or {}).get("conditions") or []
        return bool(conditions) and all(c.get("observedGeneration") == generation for c in conditions)

    def requests(self) -> int:
        """Every request the emulator has received (watch streams count once, when they start)."""
        return len(list(self.api))

    async def until(self, predicate: Any, within: float) -> float:
        """Seconds until ``predicate()`` holds (checked after every write the emulator serves)."""
        started = time.perf_counter()
        async with asyncio.timeout(within), self.api.changed:
            await self.api.changed.wait_for(predicate)
        return time.perf_counter() - started


async def run(args: argparse.Namespace) -> bool:
    """Whether the measurement ran to the end."""
    failed = False
    async with ApplyingEmulator() as api, kmock.Server(api):
        serve_operator_resources(api)
        url = str(api.url).rstrip("/")
        bench = Bench(api, url)
        with tempfile.TemporaryDirectory() as home:
            kubeconfig = write_kubeconfig(Path(home) / "kubeconfig", url)
            env = {
                **os.environ,
                "PYTHONSAFEPATH": "1",
                "KUBECONFIG": str(kubeconfig),
                "HOME": home,
                "KUBESERVE_OPERATOR_STANDALONE": "true",
                "KUBESERVE_OPERATOR_LOG_LEVEL": "warning",
                "KUBESERVE_OPERATOR_HEALTH_PORT": "0",
            }
            env.pop("KUBERNETES_SERVICE_HOST", None)
            log_path = Path(args.operator_log) if args.operator_log else Path(home) / "operator.log"
            with log_path.open("wb") as log:
                operator = await asyncio.create_subprocess_exec(OPERATOR, "run", env=env, stdout=log, stderr=log)
            try:
                await measure(bench, operator.pid, args)
            except Exception:
                # kmock's context managers swallow what the body raises: say it here, and fail.
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
        await session.post(ISVC_PATH, json=isvc("warm-up"))
        await bench.until(lambda: bench.reconciled("warm-up"), within=120)
        rss_before = rss_mib(pid)

        names = [f"model-{i:04d}" for i in range(count)]
        semaphore = asyncio.Semaphore(64)

        async def create(name: str) -> None:
            async with semaphore, session.post(ISVC_PATH, json=isvc(name)) as response:
                response.raise_for_status()

        print(f"operator against an in-memory API server, {count} InferenceServices in one namespace")
        print("| measure | value |\n|---|---|")
        cpu_start, requests_start = cpu_seconds(pid), bench.requests()
        started = time.perf_counter()
        await asyncio.gather(*(create(name) for name in names))
        created = time.perf_counter() - started
        reconciled = await timed(bench, lambda: all(bench.reconciled(name) for name in names), args.timeout, created)
        busy_cpu = cpu_seconds(pid) - cpu_start
        busy_requests = bench.requests() - requests_start
        print(f"| {count} created at once: all reconciled after | {reconciled} |")
        print(f"| ... API requests while reconciling | {busy_requests} ({busy_requests / count:.1f} per object) |")
        print(f"| ... operator CPU while reconciling | {busy_cpu:.1f} s ({busy_cpu / count * 1e3:.0f} ms per object) |")

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
        await session.post(ISVC_PATH, json=isvc("latecomer"))
        new_object = await timed(bench, lambda: bench.stored("apps/v1/deployments", "latecomer"), 60)
        print(f"| one new InferenceService: its Deployment after | {new_object} |")
        victim = names[count // 2]
        await session.delete(f"/api/v1/namespaces/{NAMESPACE}/services/{victim}")
        repaired = await timed(bench, lambda: bench.stored(SERVICES, victim), args.repair_timeout)
        print(f"| a deleted Service: back after | {repaired} |")


async def timed(bench: Bench, predicate: Any, within: float, already: float = 0.0) -> str:
    """How long until ``predicate()`` holds, for the table."""
    try:
        return f"{already + await bench.until(predicate, within):.2f} s"
    except TimeoutError:
        return f"not within {within:.0f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--objects", type=int, default=200, help="InferenceServices to create at once")
    parser.add_argument("--idle", type=float, default=60.0, help="seconds of idle measured")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds between the last reconcile and idle")
    parser.add_argument("--timeout", type=float, default=600.0, help="longest wait for all to reconcile")
    parser.add_argument("--operator-log", help="file for the operator's log (default: discarded)")
    parser.add_argument("--repair-timeout", type=float, default=90.0, help="longest wait for a deleted child")
    if not asyncio.run(run(parser.parse_args())):
        sys.exit(1)


if __name__ == "__main__":
    main()
