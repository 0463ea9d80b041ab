"""`escalon jobs submit --help`: every job kind this installation knows, one line each, and its parameters.

The kinds come from the same table the distill service validates against (escalon.distill.jobs.kinds(): the
built-in kinds and the installed entry points), read only when help is asked for, so other commands do not
pay for importing them.
"""

from __future__ import annotations

import argparse
import textwrap
from typing import Any

_SKIP = frozenset({"data_dir", "models_dir"})  # set by the service at submit, never by the caller


def _default(field: Any) -> str:
    from pydantic_core import PydanticUndefined

    if field.is_required():
        return "required"
    if field.default_factory is not None:
        try:
            value = field.default_factory()
        except TypeError:
            return "default: computed"
    else:
        value = field.default
    if value is PydanticUndefined:
        return "required"
    if hasattr(value, "model_dump"):
        return "default: " + ", ".join(f"{k}={v}" for k, v in value.model_dump().items())
    return f"default: {value!r}"


def kinds_text(width: int = 110) -> str:
    """The text under the options: each kind, its description, its parameters (name, default, meaning)."""
    from escalon.distill.jobs import kinds

    out = ["job kinds (each parameter: --param NAME=VALUE, VALUE parsed as JSON when it can be):"]
    for name, kind in kinds().items():
        out.append(f"  {name:<13} {kind.description}")
        for pname, field in kind.params.model_fields.items():
            if pname in _SKIP:
                continue
            line = f"{pname} ({_default(field)}): {field.description or ''}".rstrip(": ")
            out.extend(textwrap.wrap(line, width=width, initial_indent=" " * 16, subsequent_indent=" " * 20))
    return "\n".join(out)


class KindsHelp(argparse.Action):
    """-h/--help for `jobs submit`: the usual help, then every job kind with its parameters."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS, **kwargs: Any) -> None:
        super().__init__(option_strings, dest=dest, nargs=0, default=argparse.SUPPRESS,
                         help="show this help, every job kind and its parameters, and exit")

    def __call__(self, parser: argparse.ArgumentParser, namespace: Any, values: Any, option_string: Any = None) -> None:
        parser.formatter_class = argparse.RawDescriptionHelpFormatter
        parser.epilog = kinds_text()
        parser.print_help()
        parser.exit()
