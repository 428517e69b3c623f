"""``python -m switchyard.config``: check a config file, or generate the key reference.

    python -m switchyard.config check configs/demo.yaml --set moe.top_k=1 --dump
    python -m switchyard.config check configs/demo.yaml --world-size 2
    python -m switchyard.config docs                                   # print the reference
    python -m switchyard.config docs --write docs/configuration.md     # regenerate the file

Exit status 0 when valid; 1 with ``error: <message>`` on stderr when not (the message names
the file and line, or the --set override, and the key); 2 for bad command-line usage.

(A package ``__main__`` rather than a ``__main__`` block in the module: ``switchyard``
imports ``switchyard.config`` on start-up, and running an already imported module with -m
makes runpy print a warning.)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional

from . import ConfigError, load_config, reference_markdown, render_docs


def _check(args: argparse.Namespace) -> int:
    cfg = load_config(args.file, args.set or [])
    if args.world_size is not None:
        cfg.validate_for_world(args.world_size)
    if args.dump:
        sys.stdout.write(cfg.to_yaml())
    else:
        print(f"{args.file}: ok (fingerprint {cfg.fingerprint()})")
    return 0


def _docs(args: argparse.Namespace) -> int:
    if args.write is None and args.check is None:
        sys.stdout.write(reference_markdown())
        return 0
    path = Path(args.write or args.check)
    current = path.read_text(encoding="utf-8")
    wanted = render_docs(current)
    if args.check is not None:
        if current != wanted:
            raise ConfigError(f"{path} is out of date; regenerate it with: "
                              f"python -m switchyard.config docs --write {path}")
        return 0
    if current != wanted:
        path.write_text(wanted, encoding="utf-8")
        print(f"rewrote {path}")
    else:
        print(f"{path} is up to date")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m switchyard.config",
                                     description="Check switchyard config files; generate their reference.")
    sub = parser.add_subparsers(dest="command", required=True)

    check = sub.add_parser("check", help="validate a config file")
    check.add_argument("file", help="the YAML config file")
    check.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                       help="override a key (repeatable); the value is YAML, e.g. launch.hosts=[a:2,b:2]")
    check.add_argument("--dump", action="store_true", help="print the resolved config (every key) as YAML")
    check.add_argument("--world-size", type=int, metavar="N",
                       help="also check that the config fits a job of N ranks")
    check.set_defaults(run=_check)

    docs = sub.add_parser("docs", help="print the markdown reference of every key")
    where = docs.add_mutually_exclusive_group()
    where.add_argument("--write", metavar="PATH",
                       help="replace the generated part of PATH (docs/configuration.md) instead of printing")
    where.add_argument("--check", metavar="PATH", help="fail if the generated part of PATH is out of date")
    docs.set_defaults(run=_docs)

    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (ConfigError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
