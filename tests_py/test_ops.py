"""The fake-quant torch ops (libempas_ops.so) against their pure-PyTorch
reference: bit-identical results, op checks, errors, and the GPU variant."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

import empas  # noqa: E402
from empas import _native  # noqa: E402
from empas.quant import fake_quant, fake_quant_reference  # noqa: E402

from .weights_util import same_bits, weights  # noqa: E402

if not empas.build_info()["torch_ops"]:  # a build without torch: nothing to test here
    pytest.skip("this EMPAS build has no torch ops", allow_module_level=True)

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
BITS = range(2, 9)
SHAPES = [(1, 1), (3, 7), (37, 129), (0, 5), (6, 100)]  # (6, 100): g = 32 does not divide
GROUPS = [0, 128, 32, -1]  # per channel, 128, 32, per channel


# -- bit-identical to the reference -------------------------------------------------


@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "asym"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_op_matches_reference(dtype, symmetric):
    checked = 0
    for shape in SHAPES:
        w = weights(shape, dtype, seed=shape[0] * 1000 + shape[1])
        for g in GROUPS:
            for bits in BITS:
                for clip in (False, True):
                    args = (bits, g, symmetric, clip)
                    out = fake_quant(w, *args)
                    ref = fake_quant_reference(w, *args)
                    assert same_bits(out, ref), (shape, args)
                    assert out.is_contiguous() and (
                        w.numel() == 0 or out.data_ptr() != w.data_ptr()
                    )
                    checked += 1
    assert checked == len(SHAPES) * len(GROUPS) * len(BITS) * 2


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_inplace_equals_out_of_place(dtype):
    w = weights((16, 96), dtype, seed=1)
    for symmetric in (True, False):
        for clip in (False, True):
            args = (4, 32, symmetric, clip)
            expect = fake_quant(w, *args)
            for fn in (fake_quant, fake_quant_reference):
                v = w.clone()
                assert fn(v, *args, inplace=True) is v
                assert same_bits(v, expect)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_non_contiguous_input(dtype):
    """A GPT-2 Conv1D weight is [in, out]: quantized along its input dim as w.t()."""
    conv = weights((96, 40), dtype, seed=2)  # [in_features, out_features]
    view = conv.t()
    assert not view.is_contiguous()
    args = (3, 32, False, True)
    expect = fake_quant(view.contiguous(), *args)
    assert same_bits(fake_quant(view, *args), expect)
    assert same_bits(fake_quant_reference(view, *args), expect)
    storage = conv.clone()
    fake_quant(storage.t(), *args, inplace=True)  # written back through the view
    assert same_bits(storage.t(), expect)
    assert storage.stride() == conv.stride()


def test_zero_signs_and_ties():
    # d = -1/2 from m = +1 (first of +-1); 0.25 / -0.5 rounds to -0: the output is +0.0.
    w = torch.tensor([[1.0, -1.0, 0.25, -0.2, 0.0, -0.0]])
    out = fake_quant(w, 2, 0)
    assert out.tolist() == [[1.0, -0.5, 0.0, 0.0, 0.0, 0.0]]
    assert not torch.signbit(out[0, 2:]).any()
    assert same_bits(out, fake_quant_reference(w, 2, 0))


def test_same_result_for_any_thread_count():
    w = weights((512, 512), torch.float32, seed=3)
    n = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = fake_quant(w, 4, 128, clip_search=True)
        torch.set_num_threads(max(2, n))
        assert same_bits(fake_quant(w, 4, 128, clip_search=True), one)
    finally:
        torch.set_num_threads(n)


# -- what the quantizer does ----------------------------------------------------------


def test_levels_scales_and_error():
    w = weights((64, 256), torch.float32, seed=4)
    errs = []
    for bits in BITS:
        q = fake_quant(w, bits, 128)
        for grp in q.reshape(-1, 128)[:8]:
            assert grp.unique().numel() <= 2**bits
        errs.append(float(((q - w) ** 2).mean()))
    assert errs == sorted(errs, reverse=True)  # more bits, less error


def test_clip_search_lowers_the_error():
    w = weights((32, 256), torch.float32, seed=5)
    w[:, 7] = 0.5  # an outlier in every row
    for symmetric in (True, False):
        plain = fake_quant(w, 3, 128, symmetric)
        clipped = fake_quant(w, 3, 128, symmetric, clip_search=True)
        e_plain = ((plain - w).double() ** 2).reshape(-1, 128).sum(1)
        e_clip = ((clipped - w).double() ** 2).reshape(-1, 128).sum(1)
        assert (e_clip <= e_plain).all() and e_clip.sum() < e_plain.sum()  # r = 1 is a candidate
        assert (clipped[:, 7] < 0.5).any()  # the outlier was clipped (in some rows)


def test_bits_16_is_fp16_storage():
    w = weights((4, 8), torch.bfloat16, seed=6)
    out = fake_quant(w, 16)
    assert same_bits(out, w.to(torch.float16).to(torch.bfloat16))
    h = weights((4, 8), torch.float16)
    assert same_bits(fake_quant(h, 16), h) and fake_quant(h, 16).data_ptr() != h.data_ptr()
    v = w.clone()
    assert fake_quant_reference(v, 16, inplace=True) is v and same_bits(v, out)


def test_empty_matrices():
    for shape in [(0, 5), (5, 0)]:
        w = torch.empty(shape)
        assert fake_quant(w, 4).shape == shape
        assert fake_quant(w, 4, inplace=True) is w
        assert fake_quant_reference(w, 4).shape == shape


# -- torch integration --------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_opcheck(dtype):
    w = weights((8, 100), dtype, seed=7)
    kw = {"group_size": 32, "symmetric": False, "clip_search": True}
    torch.library.opcheck(torch.ops.empas.fake_quant.default, (w, 4), kw)
    torch.library.opcheck(torch.ops.empas.fake_quant_.default, (w.clone(), 4), kw)
    torch.library.opcheck(torch.ops.empas.fake_quant.default, (w, 3))  # schema defaults


def test_meta_tensors_give_shape_and_dtype():
    for dtype in DTYPES:
        m = torch.empty(5, 7, device="meta", dtype=dtype)
        out = torch.ops.empas.fake_quant(m, 4, 128, True, False)
        assert out.shape == (5, 7) and out.dtype == dtype and out.device.type == "meta"
        torch.ops.empas.fake_quant_(m, 4)
        with pytest.raises(RuntimeError, match="bits must be in 2..8, got 9"):
            torch.ops.empas.fake_quant(m, 9)


# -- errors ---------------------------------------------------------------------------


@pytest.mark.parametrize("fn", [fake_quant, fake_quant_reference], ids=["op", "reference"])
def test_bad_arguments(fn):
    w = torch.randn(4, 8)
    for bits in (1, 9, 0, 32):
        with pytest.raises(ValueError, match=f"bits must be in 2..8 or 16, got {bits}"):
            fn(w, bits)
    for bits in ("4", 4.0, True, None):
        with pytest.raises(ValueError, match=f"bits must be an int in 2..8 or 16, got {bits!r}"):
            fn(w, bits)
    with pytest.raises(ValueError, match=r"2-D weight .* got shape \(2, 3, 4\)"):
        fn(torch.randn(2, 3, 4), 4)
    with pytest.raises(ValueError, match="float32, float16 or bfloat16, got torch.float64"):
        fn(w.double(), 4)
    with pytest.raises(ValueError, match="group_size must be an int"):
        fn(w, 4, group_size=32.0)
    with pytest.raises(TypeError, match="torch.Tensor"):
        fn(w.numpy(), 4)


@pytest.mark.parametrize("fn", [fake_quant, fake_quant_reference], ids=["op", "reference"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_nan_or_inf_is_an_error(fn, bad):
    w = torch.randn(4, 64)
    w[2, 5] = bad
    for symmetric in (True, False):
        with pytest.raises(ValueError, match="weight contains NaN or Inf"):
            fn(w, 4, 32, symmetric)


@pytest.mark.parametrize("fn", [fake_quant, fake_quant_reference], ids=["op", "reference"])
def test_scale_overflowing_fp16_is_an_error(fn):
    w = torch.tensor([[1e6, -3.0]])
    with pytest.raises(ValueError, match="overflows fp16"):
        fn(w, 2, 0)
    assert fn(w, 8, 0).isfinite().all()  # 1e6 / 128 fits fp16


def test_raw_op_messages():
    with pytest.raises(RuntimeError, match=r"empas::fake_quant: bits must be in 2\.\.8, got 1"):
        torch.ops.empas.fake_quant(torch.randn(2, 2), 1)
    with pytest.raises(RuntimeError, match="float32, float16 or bfloat16, got Int"):
        torch.ops.empas.fake_quant(torch.ones(2, 2, dtype=torch.int32), 4)
    with pytest.raises(RuntimeError, match="empas::fake_quant_: w must be a 2-D weight"):
        torch.ops.empas.fake_quant_(torch.randn(3), 4)
    with pytest.raises(RuntimeError, match="weight contains NaN or Inf"):
        torch.ops.empas.fake_quant(torch.tensor([[float("nan"), 1.0]]), 4)


# -- the build and its errors -----------------------------------------------------------


def test_build_info_reports_the_ops():
    fake_quant(torch.randn(2, 8), 4)  # loaded
    info = empas.build_info()
    assert info["torch_ops"] is True and info["ops_loaded"] is True
    assert Path(info["ops_library"]).is_file()
    assert isinstance(info["cuda"], bool)
    assert info["cpu_isa"] in ("avx512", "avx2", "baseline")
    assert info["ops_torch_version"] == torch.__version__.split("+")[0]


def test_missing_ops_library_is_actionable(monkeypatch):
    monkeypatch.setattr(_native, "_ops_loaded", False)
    monkeypatch.setattr(_native, "_ops_error", None)
    monkeypatch.setattr(_native, "ops_library_path", lambda: None)
    with pytest.raises(empas.NativeBuildError, match="no torch ops library") as info:
        fake_quant(torch.randn(2, 8), 4)
    assert "pip install --no-build-isolation ." in str(info.value)
    assert empas.build_info()["torch_ops"] is False
    # The reference needs no build.
    assert fake_quant_reference(torch.randn(2, 8), 4).shape == (2, 8)


def test_torch_version_mismatch_is_actionable(monkeypatch):
    monkeypatch.setattr(_native, "_ops_loaded", False)
    monkeypatch.setattr(_native, "_ops_error", None)
    monkeypatch.setattr(_native, "_ops_torch_version", lambda: "1.0.0")
    with pytest.raises(empas.NativeBuildError, match="built against torch 1.0.0"):
        fake_quant(torch.randn(2, 8), 4)


def test_import_empas_without_torch():
    """A fresh interpreter where torch cannot be imported: empas imports, and
    fake_quant says what is missing."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(Path(empas.__file__).resolve().parent.parent)
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import empas\n"
        "print(empas.build_info()['torch_ops'])\n"
        "try:\n"
        "    empas.fake_quant(None, 4)\n"
        "except ImportError as e:\n"
        "    print('ImportError:', e)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "True"
    assert lines[1].startswith("ImportError: empas fake quantization needs PyTorch")


# -- GPU ---------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cuda_op_matches_cpu(dtype):
    assert empas.build_info()["cuda"], "the ops were built without CUDA kernels"
    for shape in [(1, 1), (37, 129), (64, 4096), (8, 3000)]:  # 3000: a block per group
        w = weights(shape, dtype, seed=8)
        for g in (0, 128, 32):
            for bits in (2, 4, 8):
                for symmetric in (True, False):
                    for clip in (False, True):
                        args = (bits, g, symmetric, clip)
                        expect = fake_quant(w, *args)
                        got = fake_quant(w.cuda(), *args)
                        assert got.is_cuda and same_bits(got.cpu(), expect), (shape, args)
                        assert same_bits(fake_quant_reference(w.cuda(), *args).cpu(), expect)
                        v = w.cuda().t().contiguous().t()  # non-contiguous, in place
                        fake_quant(v, *args, inplace=True)
                        assert same_bits(v.cpu(), expect)


@pytest.mark.gpu
def test_cuda_errors_and_opcheck():
    w = torch.randn(8, 100, device="cuda")
    torch.library.opcheck(torch.ops.empas.fake_quant.default, (w, 4), {"group_size": 32})
    torch.library.opcheck(torch.ops.empas.fake_quant_.default, (w.clone(), 4))
    w[3, 3] = float("nan")
    with pytest.raises(ValueError, match="weight contains NaN or Inf"):
        fake_quant(w, 4)
