"""int8 activations in the packed decode kernel (torch.ops.empas.packed_linear_a8,
PackedLinear.activations, empas.set_activations, apply/load_quantized/serve/verify
options): the result equals the exact product with x replaced by its documented
int8 reconstruction (per block of 64: dx = amax / 127, q = rint(x * 127 / amax))
within fp32 rounding, and the true product within sum |W| dx / 2; prefill rows,
layers it does not apply to and non-finite x give the exact kernel's result bit
for bit; thread counts and SIMD paths agree bit for bit; bad modes are refused."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

import empas  # noqa: E402
from empas import _native  # noqa: E402
from empas.quant.nn import PackedLinear  # noqa: E402
from empas.quant.packing import pack  # noqa: E402

if not empas.build_info()["torch_ops"]:
    pytest.skip("this EMPAS build has no torch ops", allow_module_level=True)
_native.load_ops()
ops = torch.ops.empas
U32 = 2.0**-24


def packed(out, inn, bits, g, sym, seed):
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(out, inn, generator=gen) * 0.05
    w[:, ::17] *= 6
    pw = pack(w, bits, group_size=g, symmetric=sym)
    wd = ops.dequant(pw.qweight, pw.scales, pw.zeros, bits, out, inn, g, torch.float32)
    return pw, wd


def a8(x, pw, bias, out, inn, g):
    return ops.packed_linear_a8(x, pw.qweight, pw.scales, pw.zeros, bias, pw.bits, out, inn, g)


def exact(x, pw, bias, out, inn, g):
    return ops.packed_linear(x, pw.qweight, pw.scales, pw.zeros, bias, pw.bits, out, inn, g)


def reconstruct(x):
    """(q * dx, dx per element) in fp64, with the kernel's fp32 arithmetic."""
    xb = x.float().reshape(-1, x.shape[-1] // 64, 64)
    amax = xb.abs().amax(-1, keepdim=True)
    d = amax / 127.0
    inv = torch.where(amax > 0, 127.0 / amax, torch.zeros_like(amax))
    q = torch.round(xb * inv).clamp(-127, 127)  # round half to even, as the kernel
    xh = (q.double() * d.double()).reshape(-1, x.shape[-1])
    return xh, d.double().expand_as(xb).reshape(-1, x.shape[-1])


def errors(y, x, wd, bias, pw, g):
    """(|y - W xh| / fp32 bound, |y - W x| / (sum |W| dx / 2 + fp32 bound)), max."""
    inn = x.shape[-1]
    xh, dx = reconstruct(x)
    w = wd.double()
    ref = xh @ w.T
    refx = x.double().reshape(-1, inn) @ w.T
    # the kernel sums u' q and z' q apart (u' = u, z' = z; 8-bit: u - 128, z - 128):
    # the magnitude is (|u'| + |z'|) |s| |xh| <= 2 * (2^bits - 1, or 128) |s| |xh|
    gs = inn if g <= 0 or g > inn else g
    s = pw.scales.double().repeat_interleave(gs, dim=1)[:, :inn].abs()
    coef = 2 * (128 if pw.bits == 8 else 2**pw.bits - 1) * s
    mag = xh.abs() @ coef.T
    if bias is not None:
        ref, refx = ref + bias.double(), refx + bias.double()
        mag = mag + bias.double().abs()
    bound = (inn + 2 * pw.scales.shape[1] + 8) * U32 * mag + 1e-30
    yy = y.double().reshape(ref.shape)
    qb = dx @ w.abs().T / 2
    return ((yy - ref).abs() / bound).max().item(), ((yy - refx).abs() / (qb + bound)).max().item()


@pytest.mark.parametrize("bits,g", [(2, 128), (2, 0), (4, 64), (4, 128), (4, 0), (8, 64), (8, 0)])
@pytest.mark.parametrize("sym", [True, False])
def test_within_the_documented_bounds(bits, sym, g):
    out, inn = 40, 256
    pw, wd = packed(out, inn, bits, g, sym, bits * 10 + g)
    assert ops.packed_linear_a8_applies(bits, inn, g)
    bias = torch.randn(out)
    for m in (1, 2, 5, 8):
        x = torch.randn(m, inn) * 3
        y = a8(x, pw, bias, out, inn, g)
        ea, eq = errors(y, x, wd, bias, pw, g)
        assert ea <= 1.0 and eq <= 1.0, (m, ea, eq)
        # it is not the exact kernel: int8 x differs from x
        assert not torch.equal(y, exact(x, pw, bias, out, inn, g))


def test_bound_catches_a_wrong_result():
    out, inn, g = 16, 256, 64
    pw, wd = packed(out, inn, 4, g, False, 3)
    x = torch.randn(1, inn)
    y = a8(x, pw, None, out, inn, g)
    y[0, 5] += 1e-2 * y.abs().max()  # 1%: less than int8 x's own error on the output
    ea, _ = errors(y, x, wd, None, pw, g)
    assert ea > 1.0


def test_prefill_unsupported_and_nonfinite_equal_the_exact_kernel():
    pw, _ = packed(24, 256, 4, 128, True, 1)
    xp = torch.randn(12, 256)  # more than 8 rows: the exact tiled path
    assert torch.equal(a8(xp, pw, None, 24, 256, 128), exact(xp, pw, None, 24, 256, 128))
    for bits, g, inn in ((3, 128, 256), (4, 32, 256), (4, 0, 100), (2, 64, 256)):
        assert not ops.packed_linear_a8_applies(bits, inn, g)
        pw2, _ = packed(9, inn, bits, g, False, 2)
        x = torch.randn(2, inn)
        assert torch.equal(a8(x, pw2, None, 9, inn, g), exact(x, pw2, None, 9, inn, g))
    x = torch.randn(1, 256)
    x[0, 77] = float("inf")
    ya, ye = a8(x, pw, None, 24, 256, 128), exact(x, pw, None, 24, 256, 128)
    assert ya.isnan().any()  # inf * (code - zero) of both signs and zero
    torch.testing.assert_close(ya, ye, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_and_3d(dtype):
    pw, _ = packed(33, 128, 4, 64, False, 5)
    x = torch.randn(2, 3, 128).to(dtype)
    y = a8(x, pw, None, 33, 128, 64)
    assert y.shape == (2, 3, 33) and y.dtype == dtype
    want = a8(x.float().reshape(6, 128), pw, None, 33, 128, 64).to(dtype).reshape(2, 3, 33)
    assert torch.equal(y, want)


def test_threads_and_simd_paths_agree_bit_for_bit():
    pw, _ = packed(301, 512, 4, 128, False, 6)
    x = torch.randn(3, 512)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        y1 = a8(x, pw, None, 301, 512, 128)
        torch.set_num_threads(2)
        y2 = a8(x, pw, None, 301, 512, 128)
        assert torch.equal(y1, y2)
        assert ops.set_cpu_isa("baseline")
        yb = a8(x, pw, None, 301, 512, 128)
    finally:
        ops.set_cpu_isa("auto")
        torch.set_num_threads(before)
    assert torch.equal(y1, yb)


def test_op_errors_name_the_op():
    pw, _ = packed(8, 128, 4, 64, False, 4)
    x = torch.randn(1, 128)
    op = ops.packed_linear_a8
    with pytest.raises(RuntimeError, match=r"empas::packed_linear_a8: .*qweight has 511 bytes"):
        op(x, pw.qweight[:-1], pw.scales, pw.zeros, None, 4, 8, 128, 64)
    with pytest.raises(
        RuntimeError, match=r"packed_linear_a8: .*x must have shape \[\.\.\., 128\]"
    ):
        op(torch.randn(1, 127), pw.qweight, pw.scales, pw.zeros, None, 4, 8, 128, 64)
    with pytest.raises(RuntimeError, match="x must be float32, float16 or bfloat16"):
        op(x.double(), pw.qweight, pw.scales, pw.zeros, None, 4, 8, 128, 64)
    with pytest.raises(RuntimeError, match="bits must be in 2..8"):
        op(x, pw.qweight, pw.scales, pw.zeros, None, 1, 8, 128, 64)
    with pytest.raises(RuntimeError, match=r"empas::packed_linear_a8: .*x must have shape"):
        op(torch.empty(1, 127, device="meta"), pw.qweight.to("meta"), pw.scales.to("meta"),
           pw.zeros.to("meta"), None, 4, 8, 128, 64)  # fmt: skip


def test_meta_and_opcheck():
    pw, _ = packed(24, 128, 4, 64, True, 7)
    x = torch.empty(2, 5, 128, device="meta")
    y = ops.packed_linear_a8(
        x, pw.qweight.to("meta"), pw.scales.to("meta"), None, None, 4, 24, 128, 64
    )
    assert y.shape == (2, 5, 24) and y.device.type == "meta"
    for m in (1, 12):
        args = (torch.randn(m, 128), pw.qweight, pw.scales, None, torch.randn(24), 4, 24, 128, 64)
        torch.library.opcheck(ops.packed_linear_a8.default, args)


# ---- PackedLinear, set_activations, apply / load_quantized / serve ------------------


def test_packed_linear_activations_switch():
    gen = torch.Generator().manual_seed(0)
    m = PackedLinear.from_weight(
        torch.randn(32, 128, generator=gen) * 0.05, None, 4, 64, True, False
    )
    x = torch.randn(1, 128)
    assert m.activations == "exact"
    assert torch.equal(m(x), exact(x, m, None, 32, 128, 64))
    model = torch.nn.Sequential(m, torch.nn.ReLU())
    assert empas.set_activations(model, "int8") == 1
    assert m.activations == "int8" and "activations=int8" in repr(m)
    assert torch.equal(m(x), a8(x, m, None, 32, 128, 64))
    with pytest.raises(ValueError, match="activations must be one of exact, int8; got 'fp8'"):
        empas.set_activations(model, "fp8")
    assert m.activations == "int8"  # unchanged
    assert empas.set_activations(model, "exact") == 1 and torch.equal(
        m(x), exact(x, m, None, 32, 128, 64)
    )


@pytest.fixture(scope="module")
def tiny(tiny_model_path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32).eval()


def uniform_plan(tiny_profile, bits):
    from empas.verify import uniform_plan as up

    return up(tiny_profile, bits)


def test_apply_packed_int8_decodes_close_to_exact(tiny, tiny_profile):
    plan = uniform_plan(tiny_profile, 4)
    ids = torch.tensor([[1, 5, 9, 42, 7, 3]])
    with empas.applied(tiny, plan, "packed"):
        with torch.inference_mode():
            ref = tiny(input_ids=ids[:, :1]).logits
    with empas.applied(tiny, plan, "packed", activations="int8") as m:
        packs = [x for x in m.modules() if isinstance(x, PackedLinear)]
        assert packs and all(p.activations == "int8" for p in packs)
        with torch.inference_mode():
            got = m(input_ids=ids[:, :1]).logits
    assert not any(isinstance(x, PackedLinear) for x in tiny.modules())  # restored
    rel = ((got - ref).norm() / ref.norm()).item()
    assert 0 < rel < 0.05, rel  # int8 x changes the logits a little, not a lot
    with pytest.raises(ValueError, match="needs mode='packed'"):
        empas.apply(tiny, plan, "fake", activations="int8")
    with pytest.raises(ValueError, match="activations must be one of"):
        empas.apply(tiny, plan, "packed", activations="int4")
    assert not any(isinstance(x, PackedLinear) for x in tiny.modules())  # nothing changed


def test_load_quantized_int8(tiny_model_path, tiny_profile, tmp_path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32)
    empas.save_quantized(model, uniform_plan(tiny_profile, 4), tmp_path / "q")
    m = empas.load_quantized(tmp_path / "q", activations="int8")
    packs = [x for x in m.modules() if isinstance(x, PackedLinear)]
    assert packs and all(p.activations == "int8" for p in packs)
    with pytest.raises(ValueError, match="activations must be one of"):
        empas.load_quantized(tmp_path / "q", activations="yes")


def test_serve_int8_activations(tiny_model_path, tiny_profile):
    pytest.importorskip("fastapi")
    from empas.serve.server import PlanServer, ServeError

    s = PlanServer(tiny_model_path, [uniform_plan(tiny_profile, 4)], fp16=False, activations="int8")
    packs = [x for x in s.variants["uniform-int4"].model.modules() if isinstance(x, PackedLinear)]
    assert packs and all(p.activations == "int8" for p in packs)
    out = s.generate("The city", max_new_tokens=4)
    assert out["tokens"] >= 1
    with pytest.raises(ServeError, match="activations must be one of exact, int8"):
        PlanServer(tiny_model_path, [uniform_plan(tiny_profile, 4)], activations="int4")


def test_verify_speed_passes_activations(tiny, tiny_profile, monkeypatch):
    from empas.quant import nn as qnn
    from empas.verify.speed import measure_speed

    seen = []
    real = qnn.set_activations
    monkeypatch.setattr(qnn, "set_activations", lambda m, mode: seen.append(mode) or real(m, mode))
    stream = torch.arange(3, 40)
    res = measure_speed(
        tiny,
        stream,
        [("int4", uniform_plan(tiny_profile, 4))],
        new_tokens=2,
        prompt_tokens=4,
        prefill_tokens=8,
        repeats=1,
        activations="int8",
    )
    assert res["int4"]["decode_tok_s"] > 0 and seen == ["int8", "int8"]  # warm-up + 1 round
    with pytest.raises(ValueError, match="speed_activations must be 'exact' or 'int8'"):
        empas.VerifyConfig(speed_activations="fp8")
