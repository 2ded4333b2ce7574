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


def _symlog(v: float) -> float:
    return math.copysign(math.log1p(abs(v)), v)  # Vega-Lite's symlog, constant 1


def _label_layers(points: pd.DataFrame, extent: pd.DataFrame, x, y, log_y: bool) -> list[alt.Chart]:
    """The names of ``points`` (columns mib, y, name), one text layer per labelled
    point, placed so that they stay inside the plot spanned by ``extent`` (mib, y):
    left-aligned near its left edge, right-aligned near its right edge, below the
    point near its top edge; labels outside the plot would be clipped."""
    if points.empty:
        return []
    pts = points.groupby(["mib", "y"], sort=False, as_index=False)["name"].agg(", ".join)
    ty = _symlog if log_y else float
    ex, ey = extent["mib"].astype(float), extent["y"].astype(float).map(ty)
    x_lo, x_span = float(ex.min()), float(ex.max() - ex.min()) or 1.0
    y_lo, y_span = float(ey.min()), float(ey.max() - ey.min()) or 1.0
    layers = []
    for row in pts.itertuples(index=False):
        fx, fy = (row.mib - x_lo) / x_span, (ty(row.y) - y_lo) / y_span
        align, dx = ("left", 7) if fx < 0.3 else ("right", -7) if fx > 0.7 else ("center", 0)
        baseline, dy = ("top", 9) if fy > 0.8 else ("bottom", -9)
        layers.append(
            alt.Chart(pd.DataFrame([row._asdict()]))
            .mark_text(fontSize=11, align=align, baseline=baseline, dx=dx, dy=dy)
            .encode(x=x, y=y, text="name:N", color=alt.value("#333"))
        )
    return layers


def front_chart(res: D.Results, log_y: bool) -> alt.LayerChart:
    """Predicted front, archetypes, verified (measured) plans and uniform baselines; a
    three-objective front (loss × bytes × latency) is coloured by predicted latency."""
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
    legend = alt.Legend(title=None, orient="top")
    color = alt.Color(
        "series:N", scale=alt.Scale(domain=SERIES, range=SERIES_COLORS), legend=legend
    )
    shape = alt.Shape(
        "series:N", scale=alt.Scale(domain=SERIES, range=SERIES_SHAPES), legend=legend
    )
    x = alt.X("mib:Q", title="size (MiB, predicted)", scale=alt.Scale(zero=False))
    y = alt.Y("y:Q", title=ytitle, scale=yscale)
    tooltip = [
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
    ]
    base = alt.Chart(f)
    if res.has_latency:  # no step line: the front is a surface, seen from above
        layers = [
            base.mark_point(filled=True, size=45).encode(
                x=x,
                y=y,
                color=alt.Color(
                    "latency:Q",
                    title="latency (predicted)",
                    scale=alt.Scale(scheme="viridis", reverse=True),
                    legend=alt.Legend(orient="right", gradientLength=160),
                ),
                tooltip=[alt.Tooltip("latency:Q", title="latency", format=".4g"), *tooltip],
            )
        ]
    else:
        line = base.mark_line(interpolate="step-after", opacity=0.4).encode(x=x, y=y, color=color)
        pts = base.mark_point(filled=True, size=35).encode(
            x=x, y=y, color=color, shape=shape, tooltip=tooltip
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
        extent = pd.concat([f[["mib", "y"]], ov[["mib", "y"]]])
        layers += _label_layers(ov[ov["series"] == SERIES[1]], extent, x, y, log_y)
    chart = alt.layer(*layers).properties(height=420).interactive()
    if res.has_latency:
        chart = chart.resolve_scale(color="independent", shape="independent")
    return chart


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


ROW_PX = 26  # height of one row of the precision map (sub-unit), in pixels
MIN_TEXT_CELL_PX = 17  # narrower cells show their bits by colour (and tooltip) only


def precision_chart(res: D.Results, view: D.PlanView) -> alt.Chart:
    """Bits per unit: a map block × sub-unit (one row per sub-unit, ``ROW_PX`` high,
    one column per block) with each cell's bits written in it where it is wide
    enough; bars in unit order when the unit names do not parse. Colours follow
    the bit widths in order, and the legend lists every choice."""
    df, layout = D.precision_map(res, view.bits)
    domain = sorted({*res.choices, *df["bits"]})
    color = alt.Color(
        "bits:O",
        scale=alt.Scale(domain=domain, scheme={"name": "redyellowgreen", "extent": [0.12, 0.88]}),
        legend=alt.Legend(
            title="bits",
            orient="top",
            direction="horizontal",
            values=domain,
            labelExpr="datum.label + '-bit'",
            symbolType="square",
            symbolSize=160,
            labelFontSize=12,
        ),
    )
    tip = ["unit:N", "bits:Q", "kind:N", alt.Tooltip("params:Q", format=",")]
    title = alt.Title(f"Bits per unit: {view.label}", anchor="start")
    if layout == "heatmap":
        subs = list(dict.fromkeys(df["sub"]))
        whole = subs == ["block"]
        base = alt.Chart(df).encode(
            x=alt.X(
                "block:O",
                title="block",
                axis=alt.Axis(labelAngle=0, labelOverlap="parity", labelPadding=4),
            ),
            y=alt.Y(
                "sub:N",
                sort=subs,
                title=None if whole else "sub-unit",
                axis=alt.Axis(labelLimit=0, labels=not whole, ticks=not whole),
            ),
        )
        rect = base.mark_rect(stroke="white", strokeWidth=1).encode(color=color, tooltip=tip)
        text = base.mark_text(
            fontSize=10,
            color="#1a1a1a",
            opacity=alt.ExprRef(f"bandwidth('x') >= {MIN_TEXT_CELL_PX} ? 1 : 0"),
        ).encode(text="bits:Q", tooltip=tip)
        # fit-x, not Streamlit's "fit": the height is ROW_PX per row, axes and legend added
        return alt.layer(rect, text).properties(
            title=title,
            height=alt.Step(ROW_PX),
            autosize=alt.AutoSizeParams(type="fit-x", contains="padding"),
        )
    return (
        alt.Chart(df)
        .mark_bar()
        .encode(
            x=alt.X("unit:N", sort=list(df["unit"]), title="unit", axis=alt.Axis(labelLimit=0)),
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
    speed = D.plan_speed_text(res, view)
    if speed is not None:
        st.caption(f"{view.label}: {speed}")
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


def hypervolume_text(res: D.Results) -> str:
    """The front's hypervolume as a share of the exact front's where known."""
    if res.hv_vs_exact is not None:
        if res.exact:
            return "the exact front"
        return f"hypervolume {100 * res.hv_vs_exact:.2f}% of the exact front's"
    if res.hypervolume is None:
        return ""
    return f"hypervolume {res.hypervolume:.4g} (no exact front to compare with)"


def header(res: D.Results) -> None:
    st.title("EMPAS dashboard")
    n = len(res.front)
    objectives = "loss × bytes × latency" if res.has_latency else "loss × bytes"
    hv = hypervolume_text(res)
    st.markdown(
        f"**{res.model or 'model ?'}** — {res.method} search ({objectives}), "
        f"{n} front plans over {res.n_units} units, choices "
        f"{', '.join(map(str, res.choices))} bits{', ' + hv if hv else ''}",
        help=f"model: {res.model_path}" if res.model_path else None,
    )
    lines = []
    if res.model_path and res.model_path != res.model:
        lines.append(f"model: `{res.model_path}`")
    lines.append(f"result: `{res.result_path}`")
    if res.verify_path is not None:
        lines.append(f"verify: `{res.verify_path}`")
    if res.baseline is not None:
        lines.append(f"baseline {res.baseline:.6g} from {res.baseline_source}")
    if res.hv_source is not None and not res.exact:
        lines.append(f"hypervolume vs exact: {res.hv_source}")
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
    speed = D.speed_text(res)
    if speed is not None:
        st.caption(speed)


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
