"""``make demo-autoscale``: the autoscaling loop closed on this machine for about two minutes, with shortened
windows, written to ``autoscale.csv`` and plotted to ``autoscale.png`` in ``bench/out/autoscale/`` (ignored by git);
``--docs`` (``make demo-autoscale-docs``) refreshes the copies the documentation shows, ``docs/autoscale.*``.

Real runtime processes serve the sample ``tiny`` model with each batch taking 20 ms plus 7.5 ms per row off the CPU
(as an accelerator's compute does: harness tooling, see ``bench/fixed_latency_runtime.py``); with batches
of at most 4 rows, one replica serves at most 80 requests/s. The load is idle, then a step to 2.5 times that for a
minute, then nothing. Every
1 s (the HPA's sync period, 15 s on a real controller) each replica's ``/metrics`` is scraped, the per-pod value is
computed as the adapter rule does (``rate(_sum[4s]) / rate(_count[4s])``, 0 when idle), the HPA's algorithm
(``bench/hpa_model.py``) decides, and replicas are started or drained with SIGTERM. Scale-down stabilization
is 10 s (300 s by default). The harness is ``bench/autoscaling_loop.py``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

# PYTHONSAFEPATH keeps the script's folder off sys.path (the repository root holds `operator/`); add bench/ only.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from autoscaling_loop import LoopConfig, LoopResult, Phase, ReplicaConfig, run_loop
from kubeserve.runtime.samples import write_sample

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out" / "autoscale"
DOCS = ROOT / "docs"


def plot(result: LoopResult, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result.rows
    t = [row.t for row in rows]
    figure, (load, replicas, delay, latency) = plt.subplots(4, 1, sharex=True, figsize=(8, 8), dpi=80)
    load.plot(t, [row.offered_rps for row in rows], label="offered", color="tab:gray")
    load.plot(t, [row.completed / result.config.period for row in rows], label="answered", color="tab:blue")
    load.axhline(result.config.replica.capacity, color="tab:red", linestyle=":", label="one replica's capacity")
    load.set_ylabel("requests/s")
    load.legend(loc="upper right", fontsize="small")
    replicas.step(t, [row.spec_replicas for row in rows], where="post", label="spec.replicas (HPA)")
    replicas.step(t, [row.ready_replicas for row in rows], where="post", label="ready", linestyle="--")
    replicas.set_ylabel("replicas")
    replicas.set_ylim(0, result.config.max_replicas + 0.5)
    replicas.legend(loc="upper right", fontsize="small")
    delay.plot(t, [row.mean_queue_delay_ms for row in rows], label="mean per-pod queue delay (the metric)")
    delay.axhline(result.config.target_seconds * 1000, color="tab:red", linestyle=":", label="target")
    delay.set_ylabel("ms")
    delay.set_yscale("symlog", linthresh=100)
    delay.set_ylim(bottom=0)
    delay.legend(loc="upper right", fontsize="small")
    latency.plot(t, [row.p99_latency_ms for row in rows], color="tab:purple", label="p99 latency (client)")
    latency.set_ylabel("ms")
    latency.set_yscale("symlog", linthresh=200)
    latency.set_xlabel("seconds")
    latency.legend(loc="upper right", fontsize="small")
    summary = result.summary()
    figure.suptitle(
        f"kubeserve: HPA on queue delay, closed locally ({summary['requests']} requests, {summary['failed']} failed)"
    )
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--out", type=Path, default=OUT, help="folder for autoscale.csv and autoscale.png (%(default)s)")
    where.add_argument("--docs", action="store_const", const=DOCS, dest="out", help=f"write them into {DOCS}")
    return parser.parse_args(argv)


def main() -> None:
    args = parse_arguments()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        replica = ReplicaConfig(
            write_sample("tiny", Path(scratch) / "tiny.onnx"), batch_seconds=0.02, row_seconds=0.0075, max_batch_size=4
        )
        capacity = replica.capacity
        profile = (Phase(10, 0.0), Phase(60, 2.5 * capacity), Phase(50, 0.0))
        config = LoopConfig(
            replica,
            profile,
            target_seconds=0.04,
            min_replicas=1,
            max_replicas=4,
            period=1.0,
            window=4.0,
            scale_down_stabilization=10,
        )
        result = run_loop(config, print)
    result.write_csv(args.out / "autoscale.csv")
    plot(result, args.out / "autoscale.png")
    print(json.dumps(result.summary(), indent=2))
    print(f"wrote {args.out / 'autoscale.csv'} and {args.out / 'autoscale.png'}")
    if result.failed:
        raise SystemExit(f"{len(result.failed)} requests failed")


if __name__ == "__main__":
    main()
