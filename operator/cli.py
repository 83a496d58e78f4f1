"""``kubeserve-operator``: ``run`` the operator, or ``render`` the manifests it would apply for a file."""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import sys
from collections.abc import Awaitable, Sequence
from pathlib import Path
from typing import Any

import yaml
from kubeserve.operator.naming import GROUP, VERSION
from kubeserve.operator.settings import SETTING_NAMES, SettingsError, env_name, load_settings
from kubeserve.runtime import __version__
from kubeserve.runtime.logs import configure_logging

EXIT_INVALID_INPUT = 1
EXIT_STOPPED = 1
EXIT_BAD_SETTINGS = 2

# What `--help` prints above the commands: plain text (the module's docstring is reStructuredText).
DESCRIPTION = "kubeserve-operator: run the operator, or render the manifests it would apply for a file."
# KServe's InferenceService has the same kind (and short name, isvc) in another group; its spec holds a predictor.
KSERVE_GROUP = "serving.kserve.io"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kubeserve-operator", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser(
        "run",
        help="run the operator against the cluster of the service account or kubeconfig",
        description="Settings come from KUBESERVE_OPERATOR_<NAME> environment variables: "
        + ", ".join(env_name(name) for name in SETTING_NAMES)
        + ". Flags override them.",
    )
    run.add_argument("--standalone", action="store_true", default=None, help="run without peering (one replica)")
    run.add_argument(
        "-n", "--namespace", action="append", dest="namespaces", metavar="NAMESPACE", help="watch only this namespace"
    )
    run.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="log level")

    render = commands.add_parser(
        "render",
        help="print every manifest the operator would apply for InferenceServices in a file (no cluster needed)",
        description="Reads InferenceService documents from YAML files ('-' for stdin) and prints the ConfigMap, "
        "Service, Deployment and HPA the operator would apply, as a YAML stream. The operator's settings "
        "(runtime images) come from the same environment variables as for 'run'. Exits 1 when any "
        "InferenceService is invalid, listing every problem.",
    )
    render.add_argument(
        "-f",
        "--filename",
        action="append",
        required=True,
        dest="filenames",
        metavar="FILE",
        help="InferenceService YAML ('-': stdin); repeat for several files",
    )
    return parser


# What each command needs beyond the runtime, from the operator extra (which the runtime's image does not carry):
# render needs no cluster, only the Kubernetes client's quantity parser (the builders compare resource quantities).
OPERATOR_PACKAGES = {"run": ("kopf", "kubernetes"), "render": ("kubernetes",)}


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    missing = [name for name in OPERATOR_PACKAGES[args.command] if importlib.util.find_spec(name) is None]
    if missing:
        print(
            f"kubeserve-operator: {', '.join(missing)} not installed: pip install 'kubeserve[operator]'",
            file=sys.stderr,
        )
        raise SystemExit(EXIT_BAD_SETTINGS)
    raise SystemExit(_run(args) if args.command == "run" else _render(args))


def _run(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(
            os.environ, {"standalone": args.standalone, "namespaces": args.namespaces, "log_level": args.log_level}
        )
    except SettingsError as error:
        print(f"kubeserve-operator: {error}", file=sys.stderr)
        return EXIT_BAD_SETTINGS
    import kopf  # imported here: `render` and `--help` stay fast
    from kubeserve.operator import handlers  # noqa: F401  (registers the handlers with kopf)
    from kubeserve.operator.cluster import Cluster, ClusterError

    # No cluster at all is said plainly, before kopf starts (and leaves its half-started tasks behind).
    try:
        asyncio.run(_close(Cluster.connect(request_timeout=settings.api_timeout_seconds)))
    except ClusterError as error:
        print(f"kubeserve-operator: stopped: {error}", file=sys.stderr)
        return EXIT_STOPPED

    kopf.configure(debug=settings.log_level == "debug")  # kopf's own logger levels
    configure_logging(settings.log_level)  # one JSON object per line, as the runtime logs

    try:
        kopf.run(
            clusterwide=settings.clusterwide,
            namespaces=list(settings.namespaces),
            # Peering is configured by the startup handler, which first checks that its objects exist.
            liveness_endpoint=f"http://0.0.0.0:{settings.health_port}/healthz" if settings.health_port else None,
            memo=kopf.Memo(settings=settings),
        )
    except Exception as error:  # kopf has logged the details; say why it stopped, without a traceback
        print(f"kubeserve-operator: stopped: {error.__cause__ or error}", file=sys.stderr)
        return EXIT_STOPPED
    return 0


async def _close(connecting: Awaitable[Any]) -> None:
    cluster = await connecting
    await cluster.close()


def _render(args: argparse.Namespace) -> int:
    from kubeserve.operator import manifests
    from kubeserve.operator.plan import assess

    try:
        settings = load_settings(os.environ)
    except SettingsError as error:
        print(f"kubeserve-operator: {error}", file=sys.stderr)
        return EXIT_BAD_SETTINGS
    rendered: list[dict[str, Any]] = []
    errors: list[str] = []
    for filename in args.filenames:
        source = "stdin" if filename == "-" else filename
        try:
            text = sys.stdin.read() if filename == "-" else Path(filename).read_text()
            documents = [doc for doc in yaml.safe_load_all(text) if doc is not None]
        except OSError as error:
            print(f"kubeserve-operator: cannot read {source}: {error.strerror}", file=sys.stderr)
            return EXIT_INVALID_INPUT
        except yaml.YAMLError as error:
            print(f"kubeserve-operator: {source} is not valid YAML: {error}", file=sys.stderr)
            return EXIT_INVALID_INPUT
        if not documents:
            errors.append(f"{source}: no InferenceService found")
        for number, document in enumerate(documents, start=1):
            where = f"{source}, document {number}"
            if not isinstance(document, dict):
                errors.append(f"{where}: expected an InferenceService mapping, got {type(document).__name__}")
                continue
            name = (document.get("metadata") or {}).get("name")
            where += f" ({name})" if name else ""
            if (kserve := kserve_manifest(document)) is not None:
                errors.append(f"{where}: {kserve}")
                continue
            assessment = assess(document, settings)
            if assessment.isvc is None:
                errors.extend(f"{where}: {problem}" for problem in assessment.problems)
                continue
            rendered.extend(manifests.children(assessment.isvc, settings).manifests)
            if assessment.isvc.metadata.uid is None:
                print(
                    f"kubeserve-operator: note: {where} has no metadata.uid yet, so the manifests carry no "
                    "ownerReferences (the operator adds them once the API server has created it)",
                    file=sys.stderr,
                )
    if errors:
        print("kubeserve-operator: invalid InferenceService:\n  " + "\n  ".join(errors), file=sys.stderr)
        return EXIT_INVALID_INPUT
    sys.stdout.write(yaml.dump_all(rendered, Dumper=_ManifestDumper, sort_keys=False, default_flow_style=False))
    return 0


def kserve_manifest(document: dict[str, Any]) -> str | None:
    """What to say when a document is KServe's InferenceService rather than ours (None when it is not): the same
    kind, in another API group, with spec.predictor where ours has spec.model. Listing its fields as unknown to
    kubeserve would only confuse."""
    api_version = document.get("apiVersion")
    group = api_version.partition("/")[0] if isinstance(api_version, str) else None
    spec = document.get("spec")
    predictor = isinstance(spec, dict) and "predictor" in spec
    if group != KSERVE_GROUP and not (group != GROUP and predictor):
        return None
    seen = ", ".join([*([f"apiVersion {api_version}"] if group else []), *(["spec.predictor"] if predictor else [])])
    return (
        f"this is KServe's InferenceService ({seen}), not kubeserve's: kubeserve "
        f"takes apiVersion {GROUP}/{VERSION} with spec.model (an ONNX model's uri), as in samples/isvc-cpu.yaml; "
        f"`kubectl explain inferenceservices.{GROUP}.spec` lists its fields"
    )


class _ManifestDumper(yaml.SafeDumper):
    """Readable output: multi-line strings (the runtime's config file) as literal blocks, no anchors."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _literal_strings(dumper: yaml.SafeDumper, data: str) -> yaml.Node:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_ManifestDumper.add_representer(str, _literal_strings)
