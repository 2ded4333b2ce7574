"""The EMPAS dashboard (Streamlit script).

Run it with ``empas.dashboard.launch(DIR)`` or::

    streamlit run app.py -- --results DIR [--verify FILE] [--profile FILE]

``DIR`` holds ``result.json`` (or ``search/result.json``) written by EMPAS;
``verify.json`` and ``profile.json`` next to it are picked up when present. The
results directory can also come from ``EMPAS_DASHBOARD_RESULTS`` (and
``EMPAS_DASHBOARD_VERIFY`` / ``EMPAS_DASHBOARD_PROFILE``), and be changed in the
sidebar.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
from pathlib import Path

import altair as alt
import pandas as pd
import streamlit as st

from empas.dashboard import data as D
from empas.util.sizes import format_bytes

ENV = {
    "results": "EMPAS_DASHBOARD_RESULTS",
    "verify": "EMPAS_DASHBOARD_VERIFY",
    "profile": "EMPAS_DASHBOARD_PROFILE",
}
SERIES = [
    "front (predicted)",
    "archetype (predicted)",
    "verified (measured)",
    "uniform (predicted)",
    "uniform (measured)",
]
SERIES_COLORS = ["#4c78a8", "#f58518", "#e45756", "#72b7b2", "#54a24b"]
SERIES_SHAPES = ["circle", "diamond", "triangle-up", "square", "cross"]


# ----------------------------------------------------------------------------
# inputs
# ----------------------------------------------------------------------------


def _cli_args() -> dict[str, str | None]:
    """``--results/--verify/--profile`` after ``--`` when run by ``streamlit run``."""
    out: dict[str, str | None] = {"results": None, "verify": None, "profile": None}
    try:
        is_script = Path(sys.argv[0]).resolve() == Path(__file__).resolve()
    except (OSError, IndexError):
        is_script = False
    if not is_script:  # e.g. under streamlit.testing's AppTest: argv is pytest's
        return out
    p = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    for k in out:
        p.add_argument(f"--{k}")
    try:
        ns, _ = p.parse_known_args(sys.argv[1:])
    except SystemExit:
        return out
    return {k: getattr(ns, k) for k in out}


def _defaults() -> dict[str, str]:
    cli = _cli_args()
    return {k: cli[k] or os.environ.get(ENV[k], "") for k in ENV}


# cache_resource, not cache_data: Results holds the loaded SearchResult (its profile and
# plan builder do not pickle); the app only reads it
@st.cache_resource(show_spinner=False, max_entries=8)
def _load(results: str, verify: str, profile: str, stamp: tuple) -> D.Results:
    del stamp  # only the cache key
    return D.load_results(results, verify or None, profile or None)


def _fmt(v, spec: str = ".4f", none: str = "–") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA:
        return none
    return format(v, spec)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "plan"


# ----------------------------------------------------------------------------
# charts
# ----------------------------------------------------------------------------


def front_chart(res: D.Results, log_y: bool) -> alt.LayerChart:
    """Predicted front, archetypes, verified (measured) plans and uniform baselines."""
    ytitle = (
        "Δloss (predicted on calibration, measured on held-out)"
        if res.has_delta
        else "predicted loss (no profile baseline: Δloss unknown)"
    )
    f = res.front.drop(columns=["bits"]).copy()
    f["y"] = f["pred_delta"] if res.has_delta else f["pred_loss"]
    f["series"] = SERIES[0]
    f["measured Δ"] = f["measured_delta"]
    yscale = alt.Scale(type="symlog") if log_y else alt.Scale(zero=False)
    color = alt.Color(
        "series:N",
        scale=alt.Scale(domain=SERIES, range=SERIES_COLORS),
        legend=alt.Legend(title=None, orient="top"),
    )
    shape = alt.Shape("series:N", scale=alt.Scale(domain=SERIES, range=SERIES_SHAPES), legend=None)
    x = alt.X("mib:Q", title="size (MiB, predicted)", scale=alt.Scale(zero=False))
    y = alt.Y("y:Q", title=ytitle, scale=yscale)
    base = alt.Chart(f)
    line = base.mark_line(interpolate="step-after", opacity=0.4).encode(x=x, y=y, color=color)
    pts = base.mark_point(filled=True, size=35).encode(
        x=x,
        y=y,
        color=color,
        shape=shape,
        tooltip=[
            alt.Tooltip("index:Q", title="front #"),
            alt.Tooltip("archetypes:N"),
            alt.Tooltip("mib:Q", title="MiB", format=".3f"),
            alt.Tooltip("bytes:Q", format=","),
            alt.Tooltip("pred_loss:Q", title="pred loss", format=".5f"),
            alt.Tooltip("pred_delta:Q", title="pred Δloss", format=".5f"),
            alt.Tooltip("avg_bits:Q", title="avg bits", format=".3f"),
            alt.Tooltip("verified:N"),
            alt.Tooltip("measured Δ:Q", format=".5f"),
            alt.Tooltip("bits_str:N", title="bits"),
        ],
    )
    layers = [line, pts]
    ov = D.front_overlay(res)
    if not ov.empty:
        ob = alt.Chart(ov)
        layers.append(
            ob.mark_point(size=140, filled=True, opacity=0.9).encode(
                x=x,
                y=y,
                color=color,
                shape=shape,
                tooltip=[
                    alt.Tooltip("series:N"),
                    alt.Tooltip("name:N"),
                    alt.Tooltip("front #:Q"),
                    alt.Tooltip("mib:Q", title="MiB", format=".3f"),
                    alt.Tooltip("y:Q", title="Δloss", format=".5f"),
                ],
            )
        )
        arch = ov[ov["series"] == SERIES[1]]
        layers.append(
            alt.Chart(arch)
            .mark_text(dy=-14, fontSize=11)
            .encode(x=x, y=y, text="name:N", color=alt.value("#333"))
        )
    return alt.layer(*layers).properties(height=420).interactive()


def calibration_chart(res: D.Results) -> alt.LayerChart | None:
    """Measured vs predicted Δloss of verified rows, with y = x."""
    if res.verify is None or not res.has_delta:
        return None
    v = res.verify[res.verify["kind"] != "original"][
        ["name", "kind", "pred_delta", "delta", "error"]
    ].dropna(subset=["pred_delta", "delta"])
    if v.empty:
        return None
    lo = float(min(v["pred_delta"].min(), v["delta"].min()))
    hi = float(max(v["pred_delta"].max(), v["delta"].max()))
    diag = pd.DataFrame({"a": [lo, hi]})
    pts = (
        alt.Chart(v)
        .mark_point(filled=True, size=80)
        .encode(
            x=alt.X("pred_delta:Q", title="predicted Δloss"),
            y=alt.Y("delta:Q", title="measured Δloss"),
            color=alt.Color("kind:N"),
            tooltip=["name", "kind", alt.Tooltip("pred_delta:Q", format=".5f"), "delta", "error"],
        )
    )
    line = alt.Chart(diag).mark_line(strokeDash=[4, 4], color="gray").encode(x="a:Q", y="a:Q")
    return alt.layer(line, pts).properties(height=300).interactive()


def precision_chart(res: D.Results, view: D.PlanView) -> alt.Chart:
    """Bits per unit: heatmap block × sub-unit when names parse, else bars in unit order."""
    df, layout = D.precision_map(res, view.bits)
    color = alt.Color(
        "bits:O",
        scale=alt.Scale(domain=res.choices, scheme="redyellowgreen"),
        legend=alt.Legend(title="bits"),
    )
    tip = ["unit:N", "bits:Q", "kind:N", alt.Tooltip("params:Q", format=",")]
    title = f"Bits per unit: {view.label}"
    if layout == "heatmap":
        subs = list(dict.fromkeys(df["sub"]))
        base = alt.Chart(df).encode(
            x=alt.X("block:O", title="block"),
            y=alt.Y("sub:N", sort=subs, title="sub-unit"),
        )
        chart = base.mark_rect().encode(color=color, tooltip=tip) + base.mark_text(
            fontSize=10
        ).encode(text="bits:Q")
        return chart.properties(title=title, height=max(120, 28 * len(subs)))
    return (
        alt.Chart(df)
        .mark_bar()
        .encode(
            x=alt.X("unit:N", sort=list(df["unit"]), title="unit"),
            y=alt.Y("bits:Q", title="bits"),
            color=color,
            tooltip=tip,
        )
        .properties(title=title, height=260)
    )


# ----------------------------------------------------------------------------
# sections
# ----------------------------------------------------------------------------


def show_plan(res: D.Results, view: D.PlanView, key: str, prefix: str) -> None:
    """Metrics, precision map, unit table and download button of one plan."""
    c = st.columns(5)
    c[0].metric("Predicted loss", _fmt(view.pred_loss))
    c[1].metric("Predicted Δloss", _fmt(view.pred_delta))
    c[2].metric(
        "Predicted size",
        "–"
        if view.pred_bytes is None or pd.isna(view.pred_bytes)
        else format_bytes(view.pred_bytes),
    )
    c[3].metric("Avg bits", _fmt(view.avg_bits, ".3f"))
    m = view.measured
    c[4].metric(
        "Measured Δloss",
        _fmt(None if m is None else m.get("delta")),
        help="held-out loss minus the original model's (from verify.json)",
    )
    st.caption(f"{view.label} bits: {' '.join(map(str, view.bits))}")
    st.altair_chart(precision_chart(res, view), width="stretch")
    with st.expander("Units"):
        df, _ = D.precision_map(res, view.bits)
        st.dataframe(df[["unit", "kind", "params", "bits"]], hide_index=True)
    try:
        payload = D.plan_json(res, key)
    except D.DashboardError as exc:
        st.error(str(exc))
        return
    st.download_button(
        "Download plan (empas.plan/1 JSON)",
        data=payload,
        file_name=f"{_slug(view.label)}.json",
        mime="application/json",
        key=f"{prefix}_download",
    )


def header(res: D.Results) -> None:
    st.title("EMPAS dashboard")
    n = len(res.front)
    hv = "" if res.hypervolume is None else f", hypervolume {res.hypervolume:.6g}"
    st.markdown(
        f"**{res.model or 'model ?'}** — {res.method}{' (exact)' if res.exact else ''} search, "
        f"{n} front plans over {res.n_units} units, choices {res.choices}{hv}"
    )
    lines = [f"result: `{res.result_path}`"]
    if res.verify_path is not None:
        lines.append(f"verify: `{res.verify_path}`")
    if res.baseline is not None:
        lines.append(f"baseline {res.baseline:.6g} from {res.baseline_source}")
    st.caption(" · ".join(lines))
    for w in res.warnings:
        st.warning(w)


def section_front(res: D.Results) -> None:
    st.header("Pareto front")
    log_y = st.checkbox("Symlog y axis", key="front_log_y")
    st.altair_chart(front_chart(res, log_y), width="stretch")
    st.caption(
        "Predicted Δloss = predicted loss − the profile's calibration baseline; "
        "measured Δloss = held-out loss − the original model's. Verified plans sit at "
        "their front point's predicted size. Scroll to zoom, drag to pan, double-click "
        "to reset."
    )
    if res.honesty and res.honesty.get("verdict"):
        st.info(f"Honesty check: {res.honesty['verdict']}")
    cal = calibration_chart(res)
    if cal is not None:
        with st.expander("Predicted vs measured Δloss"):
            st.altair_chart(cal, width="stretch")


def section_archetypes(res: D.Results) -> None:
    st.header("Archetypes and baselines")
    st.dataframe(D.comparison_table(res), hide_index=True)
    if res.verify_meta:
        m = res.verify_meta
        st.caption(
            f"Measured: {m.get('loss', '?')} loss on {m.get('eval_tokens', '?')} held-out "
            f"tokens ({m.get('eval_source', '?')}), mode {m.get('mode', '?')}, "
            f"{m.get('device', '?')}."
        )


def section_budget(res: D.Results) -> None:
    st.header("Memory budget")
    lo, hi, step = D.budget_slider_range(res)
    default = hi
    if "balanced" in res.archetypes:
        default = float(res.front["mib"].iloc[res.archetypes["balanced"]])
        default = min(hi, max(lo, math.ceil(default / step) * step))
    nd = max(0, -int(math.floor(math.log10(step))))
    budget = st.slider(
        "Memory budget (MiB)",
        min_value=lo,
        max_value=hi,
        value=round(default, nd),
        step=step,
        format=f"%.{nd}f MiB",
        key="budget_mib",
    )
    b = D.mib_to_bytes(budget)
    i = D.best_under(res, b)
    if i is None:
        smallest = int(res.front["bytes"].min())
        st.warning(
            f"No plan on the front fits {b:,} bytes ({format_bytes(b)}); the smallest is "
            f"{smallest:,} bytes ({format_bytes(smallest)})."
        )
        return
    view = D.plan_view(res, f"best:{i}")
    st.metric("Best plan under budget", f"front #{i}")
    show_plan(res, view, f"best:{i}", "budget")


def section_explorer(res: D.Results) -> None:
    st.header("Plan explorer")
    opts = D.plan_options(res)
    keys = list(opts)
    default = "archetype:balanced" if "archetype:balanced" in opts else keys[0]
    key = st.selectbox(
        "Plan", keys, index=keys.index(default), format_func=opts.get, key="plan_choice"
    )
    show_plan(res, D.plan_view(res, key), key, "explorer")


def main() -> None:
    st.set_page_config(page_title="EMPAS dashboard", layout="wide")
    defaults = _defaults()
    for k in ENV:
        st.session_state.setdefault(f"{k}_path", defaults[k])
    with st.sidebar:
        st.subheader("Inputs")
        st.text_input("Results directory", key="results_path", help="holds result.json")
        st.text_input("verify.json (optional)", key="verify_path")
        st.text_input("profile.json (optional)", key="profile_path")
    results = st.session_state["results_path"].strip()
    verify = st.session_state["verify_path"].strip()
    profile = st.session_state["profile_path"].strip()
    if not results:
        st.title("EMPAS dashboard")
        st.info(
            "Enter a results directory in the sidebar (one holding result.json or "
            "search/result.json), or start with `empas dashboard DIR`."
        )
        return
    try:
        res = _load(results, verify, profile, D.input_stamp(results, verify, profile))
    except D.DashboardError as exc:
        st.title("EMPAS dashboard")
        st.error(str(exc))
        return
    header(res)
    section_front(res)
    section_archetypes(res)
    section_explorer(res)
    section_budget(res)


try:
    main()
except Exception as exc:  # never a traceback in the page (st.stop/rerun are BaseException)
    st.error(f"The dashboard failed: {type(exc).__name__}: {exc}")
