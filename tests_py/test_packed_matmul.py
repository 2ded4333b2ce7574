"""The fused packed linear (torch.ops.empas.packed_linear, PackedLinear.forward):
y = x @ dequant(W)^T + bias against an fp64 reference, with the error bounded by
what dequant + an fp32 matmul errs by, over bits 2/3/4/8, group sizes (32, 128,
whole row, one not dividing in), odd shapes, batches 1..300 (the decode kernel
and the prefill tiles), sym/asym, bias, fp32/fp16/bf16 and 3-D inputs, every
SIMD path; thread-count independence; Meta shapes and opcheck; the one-time
fallback warning; corrupt packed tensors; the GPU op against the CPU op."""

from __future__ import annotations

import warnings

import pytest

torch = pytest.importorskip("torch")

import empas  # noqa: E402
from empas import _native  # noqa: E402
from empas.errors import FormatError  # noqa: E402
from empas.quant import nn as qnn  # noqa: E402
from empas.quant.nn import PackedLinear  # noqa: E402
from empas.quant.packing import pack  # noqa: E402

if not empas.build_info()["torch_ops"]:
    pytest.skip("this EMPAS build has no torch ops", allow_module_level=True)
_native.load_ops()

U32 = 2.0**-24  # fp32 unit roundoff
SHAPES = [(1, 1), (1, 7), (5, 100), (33, 256), (16, 264), (3, 40)]  # (out, in)
BATCHES = [1, 3, 8, 64, 300]


def packed(out: int, inn: int, bits: int, g: int, sym: bool, seed: int):
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(out, inn, generator=gen) * 0.05
    w[:, ::17] *= 6  # outliers, so that groups differ in scale
    pw = pack(w, bits, group_size=g, symmetric=sym)
    wd = torch.ops.empas.dequant(pw.qweight, pw.scales, pw.zeros, bits, out, inn, g, torch.float32)
    return pw, wd


def fused(x, pw, bias, out, inn, g):
    return torch.ops.empas.packed_linear(
        x, pw.qweight, pw.scales, pw.zeros, bias, pw.bits, out, inn, g
    )


def check_close(y, x, wd, bias, what: str, extra_rel: float = 0.0) -> None:
    """|y - ref| <= max(4 * (dequant + fp32 matmul's own error), 16 u sum|x w|)
    elementwise (+ extra_rel * |ref|: the rounding of a half-precision output)."""
    xd = x.double().reshape(-1, x.shape[-1])
    ref = xd @ wd.double().T
    mag = xd.abs() @ wd.double().abs().T
    dense = x.float().reshape(-1, x.shape[-1]) @ wd.T
    if bias is not None:
        ref = ref + bias.double()
        mag = mag + bias.double().abs()
        dense = dense + bias.float()
    dense_err = (dense.double() - ref).abs().max().item()
    tol = torch.clamp(16 * U32 * mag, min=4 * dense_err) + extra_rel * ref.abs() + 1e-30
    err = (y.double().reshape(ref.shape) - ref).abs()
    assert y.shape == (*x.shape[:-1], wd.shape[0]), what
    assert torch.isfinite(y).all(), what
    worst = (err / tol).max().item()
    assert worst <= 1.0, f"{what}: error {err.max().item():.3g} is {worst:.2f}x the bound"


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("sym", [True, False])
@pytest.mark.parametrize("g", [32, 128, 0, 48])
def test_matches_fp64_reference(bits, sym, g):
    seed = 0
    for out, inn in SHAPES:
        seed += 1
        pw, wd = packed(out, inn, bits, g, sym, seed)
        gen = torch.Generator().manual_seed(seed)
        bias = torch.randn(out, generator=gen)
        for k, m in enumerate(BATCHES):
            x = torch.randn(m, inn, generator=gen)
            b = bias if k % 2 == 0 else None
            y = fused(x, pw, b, out, inn, g)
            assert y.dtype == torch.float32
            check_close(y, x, wd, b, f"{out}x{inn} bits={bits} g={g} sym={sym} m={m}")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("bits", [3, 4])
def test_half_inputs_and_3d(dtype, bits):
    out, inn, g = 48, 200, 64
    pw, wd = packed(out, inn, bits, g, False, 7)
    bias = torch.randn(out).to(dtype)
    for lead in [(1, 1), (2, 3), (4, 16), (2, 150)]:
        x = torch.randn(*lead, inn).to(dtype)
        y = fused(x, pw, bias, out, inn, g)
        assert y.dtype == dtype and y.shape == (*lead, out)
        eps = torch.finfo(dtype).eps
        check_close(y, x, wd, bias, f"{dtype} {lead}", extra_rel=eps)


def test_prefill_several_tiles():
    """Prefill dequantizes >= 1024-row tiles (8 MiB of fp32): 1100 x 2112 is two
    tiles, the second one partial."""
    out, inn, g = 1100, 2112, 128
    pw, wd = packed(out, inn, 3, g, False, 21)
    bias = torch.randn(out)
    x = torch.randn(3, 4, inn)
    check_close(fused(x, pw, bias, out, inn, g), x, wd, bias, "two tiles")
    check_close(fused(x[0], pw, None, out, inn, g), x[0], wd, None, "decode, same weight")


def test_bound_catches_a_wrong_result():
    """The bound is tight enough to fail a kernel that gets one zero point wrong."""
    out, inn, g = 16, 256, 32
    pw, wd = packed(out, inn, 4, g, False, 3)
    x = torch.randn(1, inn)
    bad = pw.zeros.clone()
    bad[5, 2] += 1
    y = torch.ops.empas.packed_linear(x, pw.qweight, pw.scales, bad, None, 4, out, inn, g)
    with pytest.raises(AssertionError, match="the bound"):
        check_close(y, x, wd, None, "wrong zero")


@pytest.mark.parametrize("isa", ["baseline", "avx2", "avx512"])
def test_every_simd_path(isa):
    if not torch.ops.empas.set_cpu_isa(isa):
        pytest.skip(f"{isa} is not supported by this CPU")
    try:
        for bits in (2, 3, 4, 8):
            for out, inn, g in [(17, 512, 128), (9, 100, 32), (4, 64, 0)]:
                pw, wd = packed(out, inn, bits, g, bits % 2 == 0, bits)
                for m in (1, 2, 5, 8):
                    x = torch.randn(m, inn)
                    y = fused(x, pw, None, out, inn, g)
                    check_close(y, x, wd, None, f"{isa} bits={bits} {out}x{inn} m={m}")
    finally:
        assert torch.ops.empas.set_cpu_isa("auto")


@pytest.mark.parametrize("m", [1, 4, 8, 64])
def test_thread_count_independent(m):
    out, inn, g = 130, 512, 128
    pw, _ = packed(out, inn, 4, g, False, 11)
    x = torch.randn(m, inn)
    bias = torch.randn(out)
    before = torch.get_num_threads()
    try:
        ys = []
        for t in (1, 2, 3):
            torch.set_num_threads(t)
            ys.append(fused(x, pw, bias, out, inn, g))
    finally:
        torch.set_num_threads(before)
    assert torch.equal(ys[0], ys[1]) and torch.equal(ys[0], ys[2])


def test_empty_and_in1():
    pw, wd = packed(4, 1, 4, 32, True, 1)
    y = fused(torch.zeros(0, 1), pw, None, 4, 1, 32)
    assert y.shape == (0, 4)
    x = torch.randn(2, 3, 1)
    check_close(fused(x, pw, None, 4, 1, 32), x, wd, None, "in=1")


def test_meta_shapes_and_opcheck():
    out, inn, g = 24, 80, 32
    pw, _ = packed(out, inn, 3, g, False, 2)
    x = torch.empty(2, 5, inn, device="meta", dtype=torch.bfloat16)
    y = torch.ops.empas.packed_linear(
        x, pw.qweight.to("meta"), pw.scales.to("meta"), pw.zeros.to("meta"), None, 3, out, inn, g
    )
    assert y.shape == (2, 5, out) and y.dtype == torch.bfloat16 and y.device.type == "meta"
    for m in (1, 12):
        args = (
            torch.randn(m, inn),
            pw.qweight,
            pw.scales,
            pw.zeros,
            torch.randn(out),
            3,
            out,
            inn,
            g,
        )
        torch.library.opcheck(torch.ops.empas.packed_linear.default, args)


def test_op_errors():
    out, inn, g = 8, 64, 32
    pw, _ = packed(out, inn, 4, g, False, 4)
    x = torch.randn(1, inn)
    op = torch.ops.empas.packed_linear
    with pytest.raises(RuntimeError, match="qweight has 255 bytes, expected 256"):
        op(x, pw.qweight[:-1], pw.scales, pw.zeros, None, 4, out, inn, g)
    with pytest.raises(RuntimeError, match=r"scales must have shape \[rows, ngroups\]"):
        op(x, pw.qweight, pw.scales[:, :1], pw.zeros, None, 4, out, inn, g)
    with pytest.raises(RuntimeError, match=r"zeros must have shape"):
        op(x, pw.qweight, pw.scales, pw.zeros[:-1], None, 4, out, inn, g)
    with pytest.raises(RuntimeError, match=r"x must have shape \[\.\.\., 64\]"):
        op(torch.randn(1, 63), pw.qweight, pw.scales, pw.zeros, None, 4, out, inn, g)
    with pytest.raises(RuntimeError, match="x must be float32, float16 or bfloat16"):
        op(x.double(), pw.qweight, pw.scales, pw.zeros, None, 4, out, inn, g)
    with pytest.raises(RuntimeError, match=r"bias must have shape \[8\]"):
        op(x, pw.qweight, pw.scales, pw.zeros, torch.randn(7), 4, out, inn, g)
    with pytest.raises(RuntimeError, match="bits must be in 2..8"):
        op(x, pw.qweight, pw.scales, pw.zeros, None, 9, out, inn, g)


# ---- PackedLinear -----------------------------------------------------------


def linear(out=32, inn=96, bits=4, g=32, sym=False, bias=True, seed=0):
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(out, inn, generator=gen) * 0.05
    b = torch.randn(out, generator=gen) if bias else None
    return PackedLinear.from_weight(w, b, bits, g, sym, False)


def test_packed_linear_uses_the_fused_op(monkeypatch):
    m = linear()
    x = torch.randn(2, 3, 96)
    want = torch.ops.empas.packed_linear(x, m.qweight, m.scales, m.zeros, m.bias, 4, 32, 96, 32)
    calls = []

    def no_dequant(*a, **k):  # forward must not dequantize the whole weight
        calls.append(a)
        raise AssertionError("forward called dequant")

    monkeypatch.setattr(m, "weight_dequantized", no_dequant)
    assert torch.equal(m(x), want)
    assert not calls
    check_close(m(x), x, linear().weight_dequantized(), m.bias, "PackedLinear")


def test_fallback_warns_once_and_is_correct():
    m = linear(sym=True)
    qnn._warned.clear()
    x = torch.randn(3, 96, dtype=torch.float64)
    ref = torch.nn.functional.linear(x, m.weight_dequantized().double(), m.bias.double())
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        y1 = m(x)
        y2 = m(x)
    msgs = [str(r.message) for r in rec if issubclass(r.category, RuntimeWarning)]
    assert len(msgs) == 1 and "float64" in msgs[0] and "dequant + F.linear" in msgs[0]
    assert y1.dtype == torch.float64 and torch.allclose(y1, ref) and torch.equal(y1, y2)
    # autograd through x falls back too (the op has no backward), with a gradient
    xg = torch.randn(2, 96, requires_grad=True)
    with pytest.warns(RuntimeWarning, match="autograd"):
        m(xg).sum().backward()
    assert xg.grad is not None and xg.grad.shape == xg.shape
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error")
        m(xg)  # no grad needed: the fused op, no warning


def test_corrupt_packed_tensors_name_the_module():
    m = linear()
    m.module_name = "model.layers.0.mlp.up_proj"
    x = torch.randn(1, 96)
    good = m.qweight
    m.qweight = good[:-1]
    with pytest.raises(
        FormatError, match=r"'model.layers.0.mlp.up_proj'.*qweight is .*expected uint8 \(1536,\)"
    ):
        m(x)
    m.qweight = good.to(torch.int16)
    with pytest.raises(FormatError, match="up_proj.*qweight is torch.int16"):
        m(x)
    m.qweight = good
    m(x)
    m.scales = m.scales[:, :2]
    with pytest.raises(
        FormatError, match=r"out=32, in=96, bits=4.*scales is torch.float16 \(32, 2\)"
    ):
        m(x)
    m2 = linear()
    m2.zeros = None
    with pytest.raises(FormatError, match="zeros is missing"):
        m2(x)


def test_apply_packed_names_modules_and_runs_fused(tmp_path):
    from empas.quant.apply import replace_module

    model = torch.nn.Sequential(torch.nn.Linear(64, 16))
    new = linear(out=16, inn=64)
    replace_module(model, "0", new, None)
    assert new.module_name == "0"
    x = torch.randn(4, 64)
    check_close(model(x), x, new.weight_dequantized(), new.bias, "Sequential")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_cuda_matches_cpu(dtype):
    for bits, sym, (out, inn, g) in [
        (4, True, (256, 512, 128)),
        (3, False, (33, 100, 32)),
        (2, True, (64, 264, 0)),
        (8, False, (17, 40, 48)),
    ]:
        pw, wd = packed(out, inn, bits, g, sym, bits)
        bias = torch.randn(out)
        cuda = [t.cuda() if t is not None else None for t in (pw.qweight, pw.scales, pw.zeros)]
        for m in (1, 3, 8, 64):
            x = torch.randn(m, inn).to(dtype)
            y_cpu = fused(x, pw, bias, out, inn, g)
            y = torch.ops.empas.packed_linear(x.cuda(), *cuda, bias.cuda(), bits, out, inn, g)
            assert y.device.type == "cuda" and y.dtype == dtype
            eps = 0.0 if dtype == torch.float32 else torch.finfo(dtype).eps
            check_close(y.cpu(), x, wd, bias, f"cuda {dtype} bits={bits} m={m}", extra_rel=eps)
            assert torch.allclose(
                y.cpu().float(), y_cpu.float(), rtol=4 * max(eps, 1e-6), atol=1e-4
            )


def test_zeros_set_on_a_validated_symmetric_module_is_a_format_error():
    # once validated (weak reference to "no zeros"), a zeros tensor put on a symmetric
    # module used to reach a None weak reference (TypeError) instead of the check
    m = linear(sym=True)
    x = torch.randn(1, 96)
    m(x)
    m.zeros = torch.zeros(32, 3, dtype=torch.uint8)
    with pytest.raises(FormatError, match=r"zeros \(32, 3\) given for a symmetric weight"):
        m(x)
    with pytest.raises(FormatError, match="given for a symmetric weight"):
        m.check()


def test_forward_follows_replaced_buffers_and_settings():
    """forward binds the op's arguments once; a replaced buffer (another packed
    weight, a new bias, a device move) or another activations mode must not reuse
    the stale binding."""
    a, b = linear(sym=False), linear(sym=False, seed=5)
    x = torch.randn(1, 96)
    ref = a(x)
    a.qweight, a.scales, a.zeros = b.qweight, b.scales, b.zeros  # b's weight now
    want = torch.ops.empas.packed_linear(x, b.qweight, b.scales, b.zeros, a.bias, 4, 32, 96, 32)
    assert torch.equal(a(x), want) and not torch.equal(a(x), ref)
    a.bias = torch.ones(32)
    want = torch.ops.empas.packed_linear(x, b.qweight, b.scales, b.zeros, a.bias, 4, 32, 96, 32)
    assert torch.equal(a(x), want)
    a.activations = "int8"
    assert torch.equal(
        a(x),
        torch.ops.empas.packed_linear_a8(x, b.qweight, b.scales, b.zeros, a.bias, 4, 32, 96, 32),
    )
    with pytest.raises(ValueError, match="activations must be one of exact, int8"):
        a.activations = "int4"
    a.qweight = a.qweight[:-1].clone()  # a corrupt replacement is still checked
    with pytest.raises(FormatError, match="qweight is torch.uint8"):
        a(x)


def test_a_replaced_buffer_is_not_kept_alive():
    """forward caches nothing strong: after a forward, the old packed weight that a
    device move or an assignment replaces is freed (a strong cache of the op's
    arguments once held every CPU weight of a model moved to CUDA)."""
    import gc
    import weakref

    m, other = linear(), linear(seed=3)
    m(torch.randn(1, 96))
    old = weakref.ref(m.qweight)
    m.qweight = other.qweight.clone()
    gc.collect()
    assert old() is None
