"""Command line: ``empas search PROFILE -o OUTDIR [--budget 8GB] ...``.

Exit codes: 0 success; 2 bad input (usage, malformed files, impossible budget);
1 unexpected internal error."""

from __future__ import annotations

import argparse
import sys

EXAMPLES = """\
examples:
  empas search example:tinyllama -o out/tinyllama
  empas search profile.json -o out --budget 700MB --method exact
  empas search profile.json -o out --pop-size 200 --generations 300 --seed 1 --threads 2
  empas info example:tinyllama
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="empas",
        description="EMPAS: mixed-precision search for language models.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser(
        "search",
        help="search the Pareto front of a sensitivity profile",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    s.add_argument(
        "profile", help="empas.sensitivity/1 or original EMPAS JSON, or example:tinyllama"
    )
    s.add_argument("-o", "--out", required=True, help="output directory")
    s.add_argument("--method", choices=["nsga2", "exact"], default="nsga2")
    s.add_argument("--budget", help="memory budget for the model, e.g. 8GB, 1.5GiB, 700MB")
    s.add_argument("--max-avg-bits", type=float, help="budget on mean bits per weight")
    s.add_argument("--pop-size", type=int, default=100)
    s.add_argument("--generations", type=int, default=50)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--threads", type=int, help="worker threads (default: all cores)")
    s.add_argument("--latency", action="store_true", help="latency table as third objective")
    s.add_argument("--bits", help="allowed bit widths, comma-separated, e.g. 2,4,8")
    s.add_argument("--pin", action="append", default=[], metavar="UNIT=BITS", help="fix a unit")
    s.add_argument("--checkpoint", help="checkpoint file (resumes when it exists)")
    s.add_argument("--resolution", help="exact method: epsilon-grid width, e.g. 1MB")
    s.add_argument(
        "--negative",
        choices=["error", "clamp", "keep"],
        default="error",
        help="what to do with negative deltas in the profile",
    )
    s.add_argument("--progress", action="store_true", help="show a progress bar")
    s.add_argument("--force", action="store_true", help="overwrite existing output files")

    i = sub.add_parser("info", help="describe a profile or plan file")
    i.add_argument("path")
    return p


def _cmd_search(a: argparse.Namespace) -> int:
    import empas

    pinned = {}
    for item in a.pin:
        name, sep, bits = item.partition("=")
        if not sep or not bits.strip().isdigit():
            raise ValueError(f"--pin expects UNIT=BITS, got {item!r}")
        pinned[name] = int(bits)
    allowed = None
    if a.bits:
        try:
            allowed = [int(b) for b in a.bits.split(",")]
        except ValueError:
            raise ValueError(f"--bits expects comma-separated integers, got {a.bits!r}") from None
    prof = empas.load_profile(a.profile, negative=a.negative)
    res = empas.search(
        prof,
        method=a.method,
        pop_size=a.pop_size,
        generations=a.generations,
        seed=a.seed,
        max_bytes=a.budget,
        threads=a.threads,
        max_avg_bits=a.max_avg_bits,
        latency=a.latency,
        pinned=pinned,
        allowed_bits=allowed,
        checkpoint=a.checkpoint,
        progress=a.progress,
        resolution=a.resolution,
    )
    paths = res.save(a.out, overwrite=a.force)
    print(res.summary())
    print(
        f"wrote {paths['result']}, {paths['front_csv']} and {len(res.archetypes)} plans in {a.out}/plans"
    )
    return 0


def _cmd_info(a: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    import empas

    if not a.path.startswith("example:"):
        text = Path(a.path).read_text()
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{a.path} is not valid JSON: {exc}") from None
        if isinstance(doc, dict) and ("config" in doc or doc.get("format") == "empas.plan/1"):
            plan = empas.load_plan(a.path)
            print(plan)
            print("bits:", " ".join(map(str, plan.bits)))
            return 0
    prof = empas.load_profile(a.path)
    print(prof)
    for u in prof.units[:50]:
        print(f"  {u.name:<30} {u.kind:<8} {u.params:>12,}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "search":
            return _cmd_search(args)
        if args.command == "info":
            return _cmd_info(args)
    except (ValueError, OSError, ImportError) as exc:  # OSError: missing file, directory...
        print(f"empas {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 1


if __name__ == "__main__":
    sys.exit(main())
