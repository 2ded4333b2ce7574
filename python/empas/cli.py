"""Command line: ``empas profile MODEL --calib FILE -o profile.json``,
``empas search PROFILE -o OUTDIR [--budget 8GB] ...``, ``empas info FILE``.

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
  empas profile path/to/model --calib calib.txt -o profile.json --units sublayer
  empas profile example:tiny-llama -o tiny.json --bits 0,2,3,4,8 --estimate
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
        default=None,
        help="what to do with negative deltas in the profile (default: keep them in a "
        "table measured by empas profile, error elsewhere)",
    )
    s.add_argument("--progress", action="store_true", help="show a progress bar")
    s.add_argument("--force", action="store_true", help="overwrite existing output files")

    r = sub.add_parser(
        "profile",
        help="measure the sensitivity profile of a model (Δloss per unit and precision)",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    r.add_argument(
        "model",
        help="a local HuggingFace model directory, or example:tiny-llama (the offline model "
        "EMPAS trains and caches)",
    )
    r.add_argument(
        "--calib",
        help="calibration text file (default for example:tiny-llama: the Python docs corpus)",
    )
    r.add_argument("-o", "--out", required=True, help="profile JSON to write")
    r.add_argument("--units", default="block", choices=["block", "sublayer", "linear"])
    r.add_argument("--bits", default="2,3,4,8", help="bit widths (0 = drop block), e.g. 0,2,4,8")
    r.add_argument("--loss", default="causal_lm", choices=["causal_lm", "kl", "embedding"])
    r.add_argument("--n-tokens", type=int, help="calibration tokens (default 32 sequences)")
    r.add_argument("--seq-len", type=int, help="tokens per sequence")
    r.add_argument("--batch-size", type=int, default=4)
    r.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--checkpoint", help="checkpoint file (resumes when it exists)")
    r.add_argument("--group-size", type=int, default=128, help="0 = per output channel")
    r.add_argument("--asymmetric", action="store_true", help="zero-point quantization")
    r.add_argument("--clip-search", action="store_true", help="MSE-optimal clipping ratio")
    r.add_argument("--embeddings", action="store_true", help="the input embedding as a unit")
    r.add_argument("--head", action="store_true", help="the LM head as a unit")
    r.add_argument("--no-cache", action="store_true", help="run every experiment from scratch")
    r.add_argument(
        "--estimate",
        action="store_true",
        help="also the one-backward-pass Fisher estimate (OUT.fisher.json) and its rank "
        "correlation with the measured table",
    )
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    r.add_argument("--force", action="store_true", help="overwrite the output file")

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


def _cmd_profile(a: argparse.Namespace) -> int:
    from pathlib import Path

    import empas

    out = Path(a.out)
    if out.exists() and not a.force:
        raise FileExistsError(f"{out} exists; pass --force to overwrite it")
    try:
        bits = [int(b) for b in a.bits.split(",")]
    except ValueError:
        raise ValueError(f"--bits expects comma-separated integers, got {a.bits!r}") from None
    model = a.model
    calib = a.calib
    if model == "example:tiny-llama":
        model = empas.models.tiny_llama()
        if calib is None:
            calib = empas.models.corpus("train")
    elif model.startswith("example:"):
        raise ValueError(f"unknown example model {model!r}; the example is example:tiny-llama")
    if calib is None:
        raise ValueError("--calib FILE is required (a text file of calibration text)")
    kw = dict(
        units=a.units,
        choices=bits,
        n_tokens=a.n_tokens,
        seq_len=a.seq_len,
        batch_size=a.batch_size,
        device=a.device,
        seed=a.seed,
        group_size=a.group_size,
        symmetric=not a.asymmetric,
        clip_search=a.clip_search,
        embeddings=a.embeddings,
        head=a.head,
    )
    prof = empas.profile(
        model,
        calib,
        loss=a.loss,
        checkpoint=a.checkpoint,
        cache=not a.no_cache,
        progress=not a.quiet,
        **kw,
    )
    prof.save(out)
    t = prof.meta["timings"]
    print(prof)
    print(prof.to_pandas().to_string(float_format=lambda v: f"{v:.5f}"))
    print(
        f"baseline loss {prof.baseline:.4f}; {t['experiments']} experiments in "
        f"{t['experiments_s']:.1f} s (+{t['baseline_s']:.1f} s baseline and cache)"
    )
    print(f"wrote {out}")
    if a.estimate:
        est = empas.estimate_sensitivity(model, calib, **kw)
        epath = out.with_name(out.stem + ".fisher.json")
        est.save(epath)
        rho = empas.rank_correlation(prof, est)
        print(
            f"Fisher estimate: {est.meta['timings']['total_s']:.1f} s; Spearman rank correlation "
            f"with the measured table {rho:.3f}; wrote {epath}"
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
        if args.command == "profile":
            return _cmd_profile(args)
    except (ValueError, OSError, ImportError) as exc:  # OSError: missing file, directory...
        print(f"empas {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        hint = (
            " (rerun with the same --checkpoint to resume)"
            if getattr(args, "checkpoint", None)
            else ""
        )
        print(f"empas {args.command}: interrupted{hint}", file=sys.stderr)
        return 130
    return 1


if __name__ == "__main__":
    sys.exit(main())
