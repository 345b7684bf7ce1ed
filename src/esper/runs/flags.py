"""``esper train``'s flags, made from :class:`~esper.runs.spec.RunSpec`'s fields.

A field's help text and parsing live next to the field; this module only turns them into
``argparse`` arguments and turns parsed arguments back into a spec. Benchmarks that pass
arguments through to ``esper train`` validate them here too.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import MISSING, fields

from esper.runs.spec import RunSpec

#: Metadata keys of :func:`esper.runs.spec.option` that are not ``add_argument`` keywords.
_OWN_KEYS = ("help", "flag", "split", "positional")


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports bad usage as one line (exit code 2), without the usage block."""

    def error(self, message: str) -> None:
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        sys.exit(2)


def flag_name(name: str) -> str:
    """The command-line name of the spec field ``name`` (``mode`` is positional)."""
    spec_field = next(f for f in fields(RunSpec) if f.name == name)
    if spec_field.metadata.get("positional"):
        return name
    return spec_field.metadata.get("flag", "--" + name.replace("_", "-"))


def add_spec_arguments(parser: argparse.ArgumentParser) -> None:
    """One argument per :class:`RunSpec` field. Every default is None (or empty), so
    :func:`given_flags` can tell a flag that was set from one that was not; the spec's own
    defaults apply in :func:`spec_from_args`."""
    for spec_field in fields(RunSpec):
        meta = spec_field.metadata
        text = meta["help"]() if callable(meta["help"]) else meta["help"]
        kwargs = {k: v for k, v in meta.items() if k not in _OWN_KEYS}
        kwargs.setdefault("default", None)
        if meta.get("positional"):
            parser.add_argument(spec_field.name, nargs="?", help=text, **kwargs)
        else:
            parser.add_argument(
                flag_name(spec_field.name), dest=spec_field.name, help=text, **kwargs
            )


def given_flags(args: argparse.Namespace) -> list[str]:
    """The spec's flags that were set on the command line, by their command-line names."""
    return [flag_name(f.name) for f in fields(RunSpec) if getattr(args, f.name, None) is not None]


def _split(values: str | list[str] | None) -> tuple[str, ...] | None:
    """``"a,b"`` or ``["a", "b,c"]`` (a repeated flag) as ``("a", "b", "c")``, each once, in
    the order given; None when nothing was given."""
    if values is None:
        return None
    items = [values] if isinstance(values, str) else values
    names = tuple(dict.fromkeys(n.strip() for v in items for n in v.split(",") if n.strip()))
    return names or None


def spec_from_args(args: argparse.Namespace, **overrides) -> RunSpec:
    """The spec the parsed arguments describe: each flag not given keeps the field's default.

    Raises:
        UsageError: the values do not make a valid run (see :class:`RunSpec`).
    """
    values = {}
    for spec_field in fields(RunSpec):
        value = getattr(args, spec_field.name, None)
        if spec_field.metadata.get("split"):
            value = _split(value)
        if value is not None or spec_field.default is MISSING:
            values[spec_field.name] = value
    values.update(overrides)
    return RunSpec(**values)
