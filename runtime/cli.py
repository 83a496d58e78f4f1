"""kubeserve-runtime: serve a model, or fetch one into place and optimize it (the operator's init containers)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from kubeserve.runtime import __version__
from kubeserve.runtime.config import (
    CONFIG_FILE_ENV,
    ConfigError,
    RuntimeSettings,
    env_name,
    flag_name,
    load_settings,
)
from kubeserve.runtime.model_location import DERIVED_SETTINGS
from kubeserve.runtime.termination import termination_message_read
from pydantic.fields import FieldInfo

# Exit codes: 2 is argparse's own for a bad command line; bad settings share it.
EXIT_BAD_CONFIG = 2


def _shown(value: Any) -> str:
    """A default as a user would write it."""
    if value is None or value == [] or value == {}:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _choices(field: FieldInfo) -> list[str] | None:
    return [str(choice) for choice in get_args(field.annotation)] if get_origin(field.annotation) is Literal else None


def setting_help(name: str, field: FieldInfo) -> str:
    """A setting's description, then its allowed values, default (or that it is required) and variable."""
    facts = []
    choices = _choices(field)
    if choices:
        facts.append(f"one of: {', '.join(choices)}")
    if name in DERIVED_SETTINGS:
        facts.append("default: from model_path")
    elif field.is_required():
        facts.append("required")
    else:
        facts.append(f"default: {_shown(field.get_default(call_default_factory=True))}")
    facts.append(f"env: {env_name(name)}")
    # argparse formats help with %: a literal one must be doubled.
    return f"{field.description} ({'; '.join(facts)})".replace("%", "%%")


def _add_setting_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per setting, all defaulting to None so that unset flags do not mask env or file."""
    for name, field in RuntimeSettings.model_fields.items():
        help_text = setting_help(name, field)
        if field.annotation is bool:
            parser.add_argument(flag_name(name), dest=name, action=argparse.BooleanOptionalAction, help=help_text)
        elif (choices := _choices(field)) is not None:
            parser.add_argument(flag_name(name), dest=name, choices=choices, help=help_text)
        else:
            parser.add_argument(flag_name(name), dest=name, metavar=name.upper(), help=help_text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kubeserve-runtime", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser(
        "serve",
        help="serve an ONNX model over the Open Inference Protocol (V2) and KServe V1",
        description="Every setting can also come from a YAML file (--config or KUBESERVE_CONFIG) "
        "and from KUBESERVE_<NAME> environment variables; flag > environment > file > default.",
    )
    serve.add_argument("--config", type=Path, help=f"YAML file of settings (env: {CONFIG_FILE_ENV})")
    _add_setting_flags(serve)

    from kubeserve.runtime import fetch

    fetch_parser = commands.add_parser("fetch", help="download a model to a local path, atomically")
    fetch.add_arguments(fetch_parser)

    from kubeserve.runtime import optimize

    optimize_parser = commands.add_parser(
        "optimize", help="quantize and/or precompile a model into a new file, and compare it with the original"
    )
    optimize.add_arguments(optimize_parser)
    return parser


def _serve(args: argparse.Namespace) -> int:
    flags: dict[str, Any] = {name: getattr(args, name) for name in RuntimeSettings.model_fields}
    try:
        settings = load_settings(flags, os.environ, args.config)
    except ConfigError as error:
        print(f"kubeserve-runtime: {error}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    settings = without_unread_wait(settings)
    # Imported here so that `--help` and config errors stay fast.
    if settings.workers > 1:
        # The supervisor imports neither ONNX Runtime nor the HTTP server: its workers do.
        from kubeserve.runtime.server.supervisor import supervise

        return supervise(settings)
    from kubeserve.runtime.server.lifecycle import serve

    return serve(settings)


def without_unread_wait(settings: RuntimeSettings) -> RuntimeSettings:
    """After a failed load the server waits load_failure_exit_seconds so that the operator (or a person) can read
    why from /ready while Kubernetes collects the termination message. Where nothing collects it (not in a pod: a
    terminal, a test, a plain container) nobody is waiting, so a failed load exits at once, unless the wait was
    asked for."""
    if "load_failure_exit_seconds" in settings.model_fields_set or termination_message_read(
        settings.termination_message_path
    ):
        return settings
    return settings.model_copy(update={"load_failure_exit_seconds": 0.0})


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        raise SystemExit(_serve(args))
    if args.command == "optimize":
        from kubeserve.runtime import optimize

        raise SystemExit(optimize.run(args))
    from kubeserve.runtime import fetch

    raise SystemExit(fetch.run(args))
