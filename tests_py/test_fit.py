"""Noise-aware monotone tables (empas.fit_table), plan standard errors and the
measure-and-correct search (empas.search_measured), on synthetic profiles whose
truth is known."""

import json

import numpy as np
import pytest

import empas
from empas.errors import FormatError, InfeasibleError
from empas.profile.fit import adjustment, fit_table, isotonic_decreasing, plan_stderr
from empas.search.measured import Correction, search_measured

N = 70
CHOICES = (2, 3, 4, 8, 16)


def _pair(seed, noise=0.5):
    truth = empas.synthetic_profile(N, choices=CHOICES, seed=seed)
    noisy = empas.synthetic_profile(N, choices=CHOICES, seed=seed, noise=noise)
    return truth, noisy


def _true_delta(truth, plan):
    return truth.evaluate(plan.bits)["loss"] - truth.baseline


def test_isotonic_decreasing_pools_violators_by_weight():
    y = np.array([5.0, 1.0, 2.0, 0.1])
    np.testing.assert_allclose(isotonic_decreasing(y, np.ones(4)), [5.0, 1.5, 1.5, 0.1])
    np.testing.assert_allclose(
        isotonic_decreasing(y, np.array([1.0, 3.0, 1.0, 1.0])), [5.0, 1.25, 1.25, 0.1]
    )
    assert np.all(np.diff(isotonic_decreasing(np.array([1.0, 2.0, 3.0]), np.ones(3))) <= 0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_noise_flipped_cells_buy_no_bytes_in_the_fitted_table(seed):
    """Noise puts 3-bit cells below 4-bit ones in many units of the measured table;
    the fitted table is non-increasing in bits everywhere, strictly wherever a unit
    is sensitive at all, and closer to the truth."""
    truth, noisy = _pair(seed)
    raw = noisy.delta
    assert (raw[:, 1] < raw[:, 2]).sum() >= 5  # the noise flips cells (precondition)
    fitted = fit_table(noisy)
    d = fitted.delta[:, :4]
    assert np.all(np.diff(d, axis=1) <= 0)
    positive = d[:, :-1] > 0
    assert np.all(np.diff(d, axis=1)[positive] < 0)  # fewer bits never look free

    def rmse(a):
        return float(np.sqrt(np.mean((a[:, :4] - truth.delta[:, :4]) ** 2)))

    assert rmse(fitted.delta) < rmse(raw)


def test_fitted_table_plans_are_truly_better_than_raw_table_plans():
    """Over 6 noisy profiles x plans at uniform int3's and int4's bytes: the fitted
    table's plans lose 20% less true Δ in total than the raw table's, and none is
    more than 1% worse than the raw table's plan at the same budget."""
    fit_sum = raw_sum = 0.0
    for seed in range(6):
        truth, noisy = _pair(seed)
        for bits in (3, 4):
            budget = noisy.evaluate([bits] * N)["bytes"]
            raw_plan = empas.search(noisy, method="exact", table="raw").best_under(budget)
            fit_plan = empas.search(noisy, method="exact", table="monotone").best_under(budget)
            f, r = _true_delta(truth, fit_plan), _true_delta(truth, raw_plan)
            assert f < 1.01 * r, (seed, bits)
            fit_sum += f
            raw_sum += r
    assert fit_sum < 0.8 * raw_sum


def test_fitted_table_keeps_the_raw_one_and_reports_the_adjustment(tmp_path):
    _, noisy = _pair(0)
    fitted = fit_table(noisy)
    t = fitted.meta["source"]["table"]
    assert t["kind"] == "monotone" and t["noise_aware"] is True
    np.testing.assert_allclose(np.array(t["raw_delta"], dtype=float), noisy.delta)
    np.testing.assert_allclose(adjustment(fitted), fitted.delta - noisy.delta)
    assert fitted.fingerprint == noisy.fingerprint  # a view of the same measurement
    assert fit_table(noisy, "raw") is noisy and fit_table(fitted) is fitted
    # the file round-trips with the fit in it
    back = empas.load_profile(fitted.save(tmp_path / "fitted.json"))
    np.testing.assert_allclose(back.delta, fitted.delta)
    with pytest.raises(ValueError, match="table must be one of"):
        fit_table(noisy, "smooth")
    with pytest.raises(ValueError, match="table must be 'monotone' or 'raw'"):
        empas.search(noisy, method="exact", table="smooth")


def test_profile_without_stderr_gets_plain_isotonic_regression():
    prof = empas.example_profile("tinyllama")
    fitted = fit_table(prof)
    assert fitted.meta["source"]["table"]["noise_aware"] is False
    cols = [prof.choices.index(b) for b in sorted(prof.choices) if b != 0]
    assert np.all(np.diff(fitted.delta[:, cols], axis=1) <= 1e-15)


def test_search_records_the_table_and_plan_stderrs(tmp_path):
    _, noisy = _pair(1)
    res = empas.search(noisy, method="exact")
    assert res.source["table"] == "monotone" and res.config.table == "monotone"
    se = res.front.loss_stderr
    assert se is not None and se.shape == res.front.loss.shape and np.all(se > 0)
    p = res.front[len(res.front) // 2]
    assert p.predicted["loss_stderr"] == pytest.approx(se[len(res.front) // 2])
    assert p.predicted["table"] == "monotone"
    # saved and loaded against the raw profile: the same fitted front again
    path = res.save(tmp_path / "r", overwrite=True)["result"]
    back = empas.SearchResult.load(path, profile=noisy)
    np.testing.assert_allclose(back.front.loss, res.front.loss)
    np.testing.assert_allclose(back.front.loss_stderr, se)
    doc = json.loads(path.read_text())
    assert doc["config"]["table"] == "monotone" and len(doc["front"]["loss_stderr"]) == len(se)
    # a result written before tables existed (no 'table' in its config) was raw
    del doc["config"]["table"]
    path.write_text(json.dumps(doc))
    old = empas.SearchResult.load(path, profile=noisy)
    assert old.config.table == "raw"


def test_plan_stderr_matches_the_spread_over_repeated_noise_draws():
    """Under the independence plan_stderr assumes (true of the synthetic noise),
    the spread of a fixed plan's raw predicted Δ over 200 repeated measurements
    matches the stated standard error within 15% (3x the estimate's own error)."""
    truth = empas.synthetic_profile(N, choices=CHOICES, seed=4)
    bits = [3 if u % 3 == 0 else 4 for u in range(N)]
    preds = []
    for k in range(200):
        noisy = empas.synthetic_profile(N, choices=CHOICES, seed=4, noise=0.5, noise_seed=100 + k)
        preds.append(noisy.evaluate(bits)["loss"])
    g = noisy.genome(bits)[None, :]
    stated = plan_stderr(noisy, g, rho=0.0)[0]
    spread = float(np.std(preds, ddof=1))
    assert 0.85 < spread / stated < 1.15
    # rho = 1 (perfectly correlated cells) is the sum of the stderrs
    se = noisy.stderr[np.arange(N), g[0]]
    assert plan_stderr(noisy, g, rho=1.0)[0] == pytest.approx(se.sum())
    assert stated == pytest.approx(np.sqrt((se**2).sum()))
    # the default for a raw table assumes cells correlated by 0.2 (see plan_stderr)
    lin, sq = se.sum(), (se**2).sum()
    assert plan_stderr(noisy, g)[0] == pytest.approx(np.sqrt(sq + 0.2 * (lin**2 - sq)))
    assert truth.stderr is None and np.isnan(plan_stderr(truth, g)[0])


# -- the measure-and-correct loop -------------------------------------------------


def _super_additive(truth):
    """A 'model' whose true Δ is not additive: low-bit cells hurt 1.6x/1.3x
    (2/3 bits) and many low-bit units together hurt more (0.8 L²)."""
    tt = np.nan_to_num(truth.delta)
    ch = truth.choices

    def measure(bits):
        g = np.array([ch.index(b) for b in bits])
        f = Correction.features(tt, ch, g)
        return float(1.6 * f[0] + 1.3 * f[1] + f[2:-1].sum() + 0.8 * f[-1])

    return measure


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_measured_loop_beats_the_proxy_and_never_loses_to_uniform(seed):
    truth, noisy = _pair(seed)
    measure = _super_additive(truth)
    b3, b4 = (noisy.evaluate([b] * N)["bytes"] for b in (3, 4))
    r = search_measured(profile=noisy, budgets=[b3, b4], measure=measure, progress=False)
    assert r.budget["measurements"] <= 16
    assert {m["why"] for m in r.measurements} >= {"uniform int3", "uniform int4", "proxy best"}
    for bits, budget in ((3, b3), (4, b4)):
        rec = r.recommended[f"best_under_{budget}"]
        assert rec.predicted_bytes <= budget
        got = measure(rec.bits)
        assert got <= measure([bits] * N) + 1e-12  # never worse than uniform at the bytes
        proxy = empas.search(noisy, method="exact", table="raw").best_under(budget)
        assert got < measure(proxy.bits)  # better than the proxy-only plan
        assert rec.measured["delta"] == pytest.approx(got)


def test_measured_loop_recovers_a_known_correction_without_noise():
    truth = empas.synthetic_profile(N, choices=CHOICES, seed=5)
    measure = _super_additive(truth)
    b3 = truth.evaluate([3] * N)["bytes"]
    r = search_measured(profile=truth, budgets=[b3], measure=measure, table="raw", progress=False)
    # the correction's held-out error is a small fraction of the proxy's
    assert r.correction["loo_mae_corrected"] < 0.25 * r.correction["loo_mae_proxy"]
    assert r.correction["beta"] > 0  # super-additivity found, not explained away


def test_measured_loop_caches_measurements_and_checks_the_cache(tmp_path):
    truth, noisy = _pair(0)
    calls = []
    base = _super_additive(truth)

    def measure(bits):
        calls.append(tuple(bits))
        return base(bits)

    b4 = noisy.evaluate([4] * N)["bytes"]
    ck = tmp_path / "m.json"
    r1 = search_measured(profile=noisy, budgets=b4, measure=measure, checkpoint=ck, progress=False)
    n1 = len(calls)
    assert n1 == r1.budget["new_forward_passes"] > 0
    r2 = search_measured(profile=noisy, budgets=b4, measure=measure, checkpoint=ck, progress=False)
    assert len(calls) == n1 and r2.budget["new_forward_passes"] == 0  # all from the cache
    assert r2.recommended[f"best_under_{b4}"].bits == r1.recommended[f"best_under_{b4}"].bits
    other = empas.synthetic_profile(N + 7, choices=CHOICES, seed=0, noise=0.5)
    with pytest.raises(FormatError, match="another model, selection text or profile"):
        search_measured(
            profile=other,
            budgets=other.evaluate([4] * (N + 7))["bytes"],
            measure=measure,
            checkpoint=ck,
            progress=False,
        )


def test_measured_loop_bad_input():
    truth, noisy = _pair(0)
    m = _super_additive(truth)
    with pytest.raises(InfeasibleError, match="below the smallest plan"):
        search_measured(profile=noisy, budgets=10, measure=m, progress=False)
    with pytest.raises(ValueError, match="at least one budget"):
        search_measured(profile=noisy, budgets=[], measure=m, progress=False)
    with pytest.raises(ValueError, match="give model= and calibration="):
        search_measured(profile=noisy, budgets="1GB", progress=False)
    with pytest.raises(FloatingPointError, match="not finite"):
        search_measured(profile=noisy, budgets="1GB", measure=lambda b: float("nan"))


def test_measured_loop_on_a_real_model_uses_unseen_calibration_windows(
    tiny_model_path, calib_texts, tmp_path
):
    """On the tiny Llama: candidates are measured on calibration windows the profile
    did not use; the recommendation at uniform int4's bytes is measured no worse
    than uniform int4 there; a rerun reads the checkpoint; other text is refused."""
    from transformers import AutoTokenizer

    from empas.profile.calibration import calibration_tokens, selection_tokens

    prof = empas.profile(
        tiny_model_path,
        calib_texts,
        units="sublayer",
        choices=(2, 3, 4, 8),
        n_tokens=1024,
        seq_len=64,
        progress=False,
    )
    tok = AutoTokenizer.from_pretrained(tiny_model_path)
    cal = prof.meta["calibration"]
    used, _ = calibration_tokens(calib_texts, tok, 64, 1024, cal["seed"])
    sel, meta = selection_tokens(calib_texts, tok, cal, 512, 0)
    assert sel.shape == (8, 64) and meta["sha256"] != cal["sha256"]
    used_rows = {tuple(r) for r in used.tolist()}
    assert not any(tuple(r) in used_rows for r in sel.tolist())  # disjoint windows

    b4 = prof.evaluate([4] * prof.n_units)["bytes"]
    ck = tmp_path / "measured.json"
    kw = dict(budgets=b4, selection_tokens=512, max_measurements=8, progress=False)
    r = empas.search_measured(tiny_model_path, prof, calib_texts, checkpoint=ck, **kw)
    rows = {tuple(m["bits"]): m for m in r.measurements}
    uni = rows[tuple([4] * prof.n_units)]
    rec = r.recommended[f"best_under_{b4}"]
    assert rec.measured["delta"] <= uni["delta"]
    assert rec.predicted_bytes <= b4 and r.meta["selection_tokens"] == 512
    assert 2 <= r.budget["measurements"] <= 8
    again = empas.search_measured(tiny_model_path, prof, calib_texts, checkpoint=ck, **kw)
    assert (
        again.budget["new_forward_passes"] == 0
        and again.recommended[f"best_under_{b4}"].bits == rec.bits
    )
    with pytest.raises(ValueError, match="not the profile's calibration text"):
        empas.search_measured(tiny_model_path, prof, ["other text " * 400], **kw)
    assert "measured search" in str(r) and json.loads(json.dumps(r.to_dict()))["format"] == (
        "empas.measured-search/1"
    )
