#!/usr/bin/env python
"""Benchmarks: segkit against a peer library, timed in one process.

    python scripts/benchmark.py --list                     # the benchmarks there are
    python scripts/benchmark.py NAME [--json out.json] [options]
    python scripts/benchmark.py NAME --help                # NAME's options

A benchmark is a module ``scripts/benchmarks/NAME.py`` (names starting with ``_`` are helpers) with
a docstring whose first line describes it, ``add_arguments(parser)`` and ``run(args) -> list[dict]``
(one dict per row). Adding one needs no change here. ``benchmarks._timing`` holds the shared
timing helpers: candidates run alternately in the same process, medians are reported.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import json
import math
import platform
import sys
from pathlib import Path
from typing import Any

BENCHMARKS = Path(__file__).resolve().parent / "benchmarks"


def discover() -> dict[str, str]:
    """Benchmark name -> first line of its docstring (read without importing the module)."""
    found = {}
    for path in sorted(BENCHMARKS.glob("*.py")):
        if not path.stem.startswith("_"):
            doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
            found[path.stem] = doc.strip().splitlines()[0] if doc.strip() else ""
    return found


def format_table(rows: list[dict[str, Any]]) -> str:
    columns: list[str] = []
    for row in rows:
        columns += [key for key in row if key not in columns]

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return "nan" if math.isnan(value) else f"{value:.4g}"
        return "" if value is None else str(value)

    cells = [[cell(row.get(column)) for column in columns] for row in rows]
    widths = [max(len(column), *(len(r[i]) for r in cells)) for i, column in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in cells]
    return "\n".join(lines)


def environment() -> dict[str, Any]:
    import torch

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    benchmarks = discover()
    top = argparse.ArgumentParser(
        prog="benchmark.py", description=(__doc__ or "").split("\n\n")[0], add_help=False, allow_abbrev=False
    )
    top.add_argument("name", nargs="?", help="the benchmark to run")
    top.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    args, rest = top.parse_known_args(argv)
    if args.list or args.name is None:
        if args.name is None and not args.list:
            print("usage: benchmark.py NAME [--json out.json] [options] | --list\n")
        width = max(map(len, benchmarks), default=0)
        print("\n".join(f"{name.ljust(width)}  {doc}" for name, doc in benchmarks.items()))
        return 0
    if args.name not in benchmarks:
        print(f"benchmark.py: unknown benchmark {args.name!r}; choose one of {', '.join(benchmarks)}.", file=sys.stderr)
        return 2
    sys.path.insert(0, str(BENCHMARKS.parent))
    module = importlib.import_module(f"benchmarks.{args.name}")
    parser = argparse.ArgumentParser(prog=f"benchmark.py {args.name}", description=benchmarks[args.name])
    parser.add_argument("--json", metavar="PATH", help="also write the rows (and the environment) to this JSON file")
    module.add_arguments(parser)
    options = parser.parse_args(rest)
    rows = module.run(options)
    print(format_table(rows))
    if options.json:
        report = {"benchmark": args.name, "command": " ".join(["python", "scripts/benchmark.py", *argv]),
                  "environment": environment(), "rows": rows}
        Path(options.json).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {options.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
