"""The ``attrbound`` command line: a thin layer over the library.

Each sub-command lives in its own module ``attrbound.cli.<name>`` exposing
``add_arguments(parser)`` and ``run(args) -> int``. Errors a user can cause
(:class:`~attrbound.errors.AttrboundError`) are printed as one line, exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from attrbound import __version__
from attrbound.errors import AttrboundError

#: sub-command name -> one-line help
COMMANDS = {
    "train": "train a classifier on a dataset and save a safetensors checkpoint",
    "explain": "save a grid of attribution heatmaps for a few inputs",
    "bound": "upper bounds on the worst-case attribution deviation",
    "attack": "attribution attacks (lower bounds on the worst case)",
    "evaluate": "bounds and attacks over a grid of settings, one JSON line per input",
    "report": "HTML report (tables and plots) from evaluate rows",
    "demo": "the bundled end-to-end demo run by `make demo`",
}


def parser(only: str | None = None) -> argparse.ArgumentParser:
    """The argument parser; with ``only``, just that sub-command's module is imported."""
    p = argparse.ArgumentParser(prog="attrbound", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"attrbound {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_ in COMMANDS.items():
        sp = sub.add_parser(name, help=help_, description=help_)
        if only is None or name == only:
            importlib.import_module(f"attrbound.cli.{name}").add_arguments(sp)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 ok, 2 for a user error)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    chosen = next((a for a in argv if not a.startswith("-")), None)
    args = parser(chosen if chosen in COMMANDS else None).parse_args(argv)
    module = importlib.import_module(f"attrbound.cli.{args.command}")
    try:
        return int(module.run(args) or 0)
    except AttrboundError as exc:
        print(f"attrbound {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"attrbound {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
