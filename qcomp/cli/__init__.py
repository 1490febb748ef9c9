"""The `qcomp` command line. Each module `qcomp/cli/cmd_*.py` adds one subcommand via `register(sub)`."""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qcomp", description="qcomp: a compiler for quantized compute graphs")
    sub = parser.add_subparsers(dest="command", required=True)
    for mod in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if mod.name.startswith("cmd_"):
            importlib.import_module(f"{__name__}.{mod.name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # output piped into e.g. `head`: not an error
        sys.stderr.close()
        return 0
    except Exception as e:  # user-facing errors: one clear line, no traceback unless asked
        if getattr(args, "traceback", False):
            raise
        print(f"qcomp {args.command}: error: {e}", file=sys.stderr)
        return 1
