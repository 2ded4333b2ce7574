"""The dashboard in a real browser: `empas dashboard` processes opened in headless
Chromium (Debian's ``chromium``, driven by Playwright), 1400 px wide.

For a demo-like directory (profile, search, verify.json, report.json), a search-only
directory, a 2-objective result of 80 blocks x 7 linears, a 3-objective result and a
broken result.json, each page must load without console errors; every chart must fit
its rows (>= 20 px per precision-map row) and its visible labels must neither overlap
nor leave the chart (mark labels: the plot); the budget slider must change the selected
plan, and the download buttons must deliver the plan JSON. A failing check saves a
screenshot of the page under ``$EMPAS_BROWSER_ARTIFACTS`` (default build/browser/).

Skipped, with the reason, where Playwright or a chromium binary is missing;
``scripts/setup.sh --dev`` installs both."""

from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

import empas

pytest.importorskip("streamlit")
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed (scripts/setup.sh --dev)"
)
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:
    pytest.skip(
        "no chromium on PATH (apt-get install chromium; scripts/setup.sh --dev)",
        allow_module_level=True,
    )

from empas.dashboard import data as D  # noqa: E402

from .dashboard_util import Dashboard, write_verify  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(os.environ.get("EMPAS_BROWSER_ARTIFACTS") or ROOT / "build" / "browser")
WIDTH, HEIGHT = 1400, 4000  # tall: Streamlit scrolls inside the page, charts load as seen
MIN_ROW_PX = 20
TIMEOUT_MS = 90_000
# the page has run to its end: both download buttons (explorer, budget), or an error
READY = """document.querySelectorAll('[data-testid="stDownloadButton"]').length >= 2
    || !!document.querySelector('[data-testid="stAlertContentError"]')"""


# -- the result directories ------------------------------------------------------------


def _demo(out: Path) -> Path:
    """Like `empas demo`: profile.json, search/ (NSGA-II), verify.json, report.json
    (hypervolume vs the exact front). 6 blocks x 7 linears; measured numbers synthetic."""
    prof = empas.synthetic_profile(n_units=42, seed=0)
    res = empas.search(prof, pop_size=60, generations=20, seed=0)
    exact = empas.search(prof, method="exact")
    res.save(out / "search")
    prof.save(out / "profile.json")
    write_verify(out / "verify.json", prof, res)
    f = res.front
    report = {
        "format": "empas.demo/1",
        "front": {
            "method": res.method,
            "plans": len(f),
            "bytes_min": int(f.bytes.min()),
            "bytes_max": int(f.bytes.max()),
            "hypervolume_vs_exact": res.hypervolume_ratio(exact),
        },
    }
    (out / "report.json").write_text(json.dumps(report))
    return out


def _search_only(out: Path) -> Path:
    """`empas search` output alone: no profile beside it, no verify.json."""
    empas.search(empas.load_profile("example:tinyllama"), method="exact").save(out)
    return out


def _two_objective(out: Path) -> Path:
    """80 blocks x 7 linears (560 units), the front of NSGA-II, with its profile."""
    prof = empas.synthetic_profile(n_units=560, seed=1)
    empas.search(prof, pop_size=40, generations=10, seed=0).save(out)
    prof.save(out / "profile.json")
    return out


def _three_objective(out: Path) -> Path:
    """loss x bytes x latency (a latency table on a synthetic profile)."""
    d = empas.synthetic_profile(n_units=42, seed=2).to_dict()
    rng = np.random.default_rng(0)
    d["latency"] = [[w * (0.5 + b / 16) for b in d["choices"]] for w in rng.uniform(0.5, 2, 42)]
    prof = empas.Profile.from_dict(d)
    empas.search(prof, latency=True, pop_size=60, generations=20, seed=0).save(out)
    prof.save(out / "profile.json")
    return out


def _broken(out: Path) -> Path:
    (out / "result.json").write_text('{"format": "empas.search/1", "front": ')
    return out


KINDS = {
    "demo": _demo,
    "search-only": _search_only,
    "2-objective": _two_objective,
    "3-objective": _three_objective,
    "broken": _broken,
}


@pytest.fixture(scope="module")
def dashboards(tmp_path_factory, request):
    """One `empas dashboard` process per directory, all started at once. The broken
    directory is served with a valid one first (the launcher checks its input) and
    then broken: the page must say what is wrong. ``--dashboard-demo DIR``: the demo
    directory is a copy of DIR (a real `empas demo` output)."""
    dirs = {}
    for k, make in KINDS.items():
        out = tmp_path_factory.mktemp(k.replace("-", "_"))
        given = request.config.getoption("--dashboard-demo") if k == "demo" else None
        dirs[k] = shutil.copytree(given, out, dirs_exist_ok=True) if given else make(out)
    broken = dirs["broken"]
    shutil.copy(dirs["search-only"] / "result.json", broken / "result.json")
    logs = tmp_path_factory.mktemp("logs")
    running = {k: Dashboard(d, log=logs / f"{k}.log") for k, d in dirs.items()}
    try:
        for d in running.values():
            d.wait_healthy()
        _broken(broken)
        yield {k: (dirs[k], d) for k, d in running.items()}
    finally:
        for d in running.values():  # all at once, then wait for each
            d.signal_stop()
        for d in running.values():
            d.stop()


@pytest.fixture(scope="session")
def browser():
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield b
        finally:
            b.close()


@contextmanager
def screenshot_on_failure(page, name: str):
    """Saves ``ARTIFACTS/<name>.png`` of the page when the block fails, and says where."""
    try:
        yield
    except BaseException as exc:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        try:
            page.screenshot(path=str(path), full_page=True)
            if hasattr(exc, "add_note"):
                exc.add_note(f"screenshot of the page: {path}")
        except Exception as shot:  # the page itself is gone: keep the original failure
            if hasattr(exc, "add_note"):
                exc.add_note(f"no screenshot ({shot})")
        raise


class Page:
    """A dashboard page, with the console's errors collected from its first request."""

    def __init__(self, browser, url: str):
        self.context = browser.new_context(
            viewport={"width": WIDTH, "height": HEIGHT}, accept_downloads=True
        )
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.page.on(
            "console",
            lambda m: self.errors.append(f"console.{m.type}: {m.text}") if m.type == "error" else 0,
        )
        self.page.on("pageerror", lambda e: self.errors.append(f"page error: {e}"))
        self.page.set_default_timeout(TIMEOUT_MS)
        self.page.goto(url)
        self.settle()

    def settle(self, ready: str = READY) -> None:
        """Waits until the script has run to its end (``ready``, a JS expression, holds)
        and every chart and widget is drawn: Streamlit loads some widgets' code when
        first shown, with a skeleton standing in until then."""
        self.page.wait_for_function(
            f"""() => ({ready})
                && !document.querySelector('[data-testid="stStatusWidget"]')
                && !document.querySelector('[data-testid="stSkeleton"]')
                && [...document.querySelectorAll('[data-testid="stVegaLiteChart"]')]
                    .every(c => c.querySelector('svg.marks'))""",
            polling=200,
        )
        self.page.wait_for_timeout(300)  # Vega's last layout pass after the data arrive

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def open_page(browser, request):
    """``open_page(url)``: a page whose failure leaves a screenshot named after the test."""
    pages: list[Page] = []

    @contextmanager
    def opened(url: str):
        p = Page(browser, url)
        pages.append(p)
        with screenshot_on_failure(p.page, request.node.name.replace("/", "_")):
            yield p

    yield opened
    for p in pages:
        p.close()


# -- what a chart must look like ----------------------------------------------------------

CHART_JS = """charts => charts.map(c => [c, c.querySelector('svg.marks')])
    .filter(([c, svg]) => svg && svg.getBoundingClientRect().height > 0)  // not in a closed expander
    .map(([c, svg]) => {
  const rect = e => { const b = e.getBoundingClientRect();
                      return {x: b.x, y: b.y, w: b.width, h: b.height}; };
  const visible = t => {
    for (let n = t; n && n !== svg; n = n.parentElement) {
      const o = n.getAttribute('opacity');
      if (o !== null && parseFloat(o) === 0) return false;
    }
    return t.textContent.trim() !== '' && getComputedStyle(t).visibility !== 'hidden';
  };
  const texts = [...svg.querySelectorAll('text')].filter(visible).map(t => ({
    text: t.textContent, mark: !!t.closest('.role-mark'), ...rect(t)}));
  const plot = svg.querySelector('.role-frame.root > g > path.background');
  const title = svg.querySelector('.role-title-text');
  return {
    title: title ? title.textContent : '',
    host: rect(c), svg: rect(svg), plot: plot ? rect(plot) : null, texts,
    cells: [...svg.querySelectorAll('.mark-rect.role-mark path')].map(rect),
  };
})"""


def _inside(a: dict, b: dict, tol: float = 1.0) -> bool:
    return (
        a["x"] >= b["x"] - tol
        and a["y"] >= b["y"] - tol
        and a["x"] + a["w"] <= b["x"] + b["w"] + tol
        and a["y"] + a["h"] <= b["y"] + b["h"] + tol
    )


def _overlap(a: dict, b: dict, tol: float = 2.5) -> bool:
    """Whether two text boxes overlap by more than ``tol`` px both ways (the boxes are
    font em boxes, taller than the glyphs: stacked legend labels touch)."""
    return (
        min(a["x"] + a["w"], b["x"] + b["w"]) - max(a["x"], b["x"]) > tol
        and min(a["y"] + a["h"], b["y"] + b["h"]) - max(a["y"], b["y"]) > tol
    )


def check_charts(page) -> list[dict]:
    """Every visible chart: drawn, as tall as its rows need, labels apart and inside."""
    charts = page.locator('[data-testid="stVegaLiteChart"]').evaluate_all(CHART_JS)
    for c in charts:
        name = c["title"] or "the front chart"
        assert c["svg"]["h"] > 0 and c["svg"]["w"] > 0, f"{name}: not drawn"
        assert c["host"]["h"] >= c["svg"]["h"] - 1, f"{name}: cut by its container"
        if c["title"].startswith("Bits per unit"):
            rows = {round(r["y"]) for r in c["cells"]}
            assert c["cells"], f"{name}: no cells"
            short = [r["h"] for r in c["cells"] if r["h"] < MIN_ROW_PX]
            assert not short, f"{name}: rows {short[:5]} px high for {len(rows)} rows"
        texts = c["texts"]
        for t in texts:  # 3 px: a text's box is its font's em box, a little above the glyphs
            assert _inside(t, c["svg"], 3), f"{name}: label {t['text']!r} leaves the chart"
            if t["mark"] and c["plot"] is not None:
                assert _inside(t, c["plot"]), f"{name}: label {t['text']!r} clipped by the plot"
        for i, a in enumerate(texts):
            for b in texts[i + 1 :]:
                assert not _overlap(a, b), f"{name}: labels {a['text']!r} and {b['text']!r} overlap"
    return charts


def metric(page, label: str, nth: int = 0) -> str:
    m = page.locator('[data-testid="stMetric"]').filter(has=page.get_by_text(label, exact=True))
    return m.nth(nth).locator('[data-testid="stMetricValue"]').inner_text().strip()


def best_plan(page, i: int):
    """The budget section's "Best plan under budget" metric showing front #i."""
    return (
        page.locator('[data-testid="stMetric"]')
        .filter(has=page.get_by_text("Best plan under budget", exact=True))
        .locator('[data-testid="stMetricValue"]')
        .get_by_text(f"front #{i}", exact=True)
    )


def download(page, nth: int) -> str:
    """The payload of the nth download button (0: the plan explorer's, 1: the budget's)."""
    with page.expect_download() as info:
        page.locator('[data-testid="stDownloadButton"] button').nth(nth).click()
    return Path(info.value.path()).read_text()


def press_slider(p: Page, key: str, then) -> None:
    """Presses ``key`` on the budget slider; waits until ``then`` (a locator) is shown
    and the page has settled again."""
    p.page.locator('[data-testid="stSlider"] input[type="range"]').press(key)
    sync_api.expect(then).to_be_visible(timeout=TIMEOUT_MS)
    p.settle("true")


# -- the tests --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["demo", "search-only", "2-objective", "3-objective"])
def test_dashboard_in_the_browser(dashboards, open_page, kind, request):
    out, dash = dashboards[kind]
    res = D.load_results(out)
    with open_page(dash.url) as p:
        page = p.page
        main = page.locator('[data-testid="stMain"]')
        head = main.locator('[data-testid="stMarkdownContainer"] p').first
        assert head.locator("strong").inner_text() == res.model
        objectives = "loss × bytes × latency" if kind == "3-objective" else "loss × bytes"
        assert f"search ({objectives})" in head.inner_text()
        if kind == "demo":
            share = f"hypervolume {100 * res.hv_vs_exact:.2f}% of the exact front's"
            assert share in head.inner_text()
            caption = main.locator('[data-testid="stCaptionContainer"]').first.inner_text()
            assert f"verify: {out / 'verify.json'}" in caption
        assert not page.get_by_text("Deploy", exact=True).count(), "Streamlit's Deploy button"
        charts = check_charts(page)
        maps = [c for c in charts if c["title"].startswith("Bits per unit")]
        assert len(maps) == 2, [c["title"] for c in charts]  # explorer and budget
        front_texts = {t["text"] for t in charts[0]["texts"]}
        labels = {n for t in charts[0]["texts"] if t["mark"] for n in t["text"].split(", ")}
        assert set(res.archetypes) <= labels, labels  # every archetype named, none clipped
        assert ("latency (predicted)" in front_texts) == (kind == "3-objective")

        # the plan explorer's download is the selected plan's empas.plan/1 JSON
        key = "archetype:balanced" if "balanced" in res.archetypes else "front:0"
        assert json.loads(download(page, 0)) == json.loads(D.plan_json(res, key))

        # the budget slider picks the best plan under the budget; its download is that plan
        lo, hi, _ = D.budget_slider_range(res)
        before = metric(page, "Best plan under budget")
        best = D.best_under(res, D.mib_to_bytes(hi))
        press_slider(p, "End", best_plan(page, best))
        assert before != f"front #{best}", before  # the default (balanced) is another plan
        assert json.loads(download(page, 1)) == json.loads(D.plan_json(res, f"best:{best}"))
        check_charts(page)
        if kind == "demo":
            shot = request.config.getoption("--dashboard-screenshot")
            if shot:  # the README's picture: the top of the page, front to explorer
                Path(shot).parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=shot, clip={"x": 0, "y": 0, "width": WIDTH, "height": 2300})
            assert D.best_under(res, D.mib_to_bytes(lo)) is None
            press_slider(p, "Home", page.get_by_text("No plan on the front fits"))
            assert page.locator('[data-testid="stDownloadButton"]').count() == 1
            check_charts(page)
        assert not p.errors, p.errors


def test_broken_result_shows_the_error(dashboards, open_page):
    out, dash = dashboards["broken"]
    with open_page(dash.url) as p:
        err = p.page.locator('[data-testid="stAlert"]').first.inner_text()
        assert str(out / "result.json") in err
        assert not p.page.locator('[data-testid="stVegaLiteChart"]').count()
        assert not p.errors, p.errors


def test_a_failing_check_saves_a_screenshot(browser):
    page = browser.new_page()
    try:
        page.set_content("<h1>a page</h1>")
        shot = ARTIFACTS / "selftest-failure.png"
        shot.unlink(missing_ok=True)
        with pytest.raises(AssertionError) as ei:
            with screenshot_on_failure(page, "selftest-failure"):
                raise AssertionError("a failing check")
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"screenshot of the page: {shot}" in ei.value.__notes__
        shot.unlink()
    finally:
        page.close()
