"""The packing torch ops (empas::quantize_pack, empas::dequant) against their
pure-PyTorch reference: bit-identical packed bytes and dequantized values,
dequant(pack(w)) == fake_quant(w), the byte accounting, op checks, errors, and
the GPU variant."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

import empas  # noqa: E402
from empas import _native  # noqa: E402
from empas.quant import fake_quant  # noqa: E402
from empas.quant.packing import (  # noqa: E402
    PackedWeight,
    dequant,
    dequant_reference,
    pack,
    pack_reference,
)

from .weights_util import same_bits, weights  # noqa: E402

if not empas.build_info()["torch_ops"]:  # a build without torch: nothing to test here
    pytest.skip("this EMPAS build has no torch ops", allow_module_level=True)
_native.load_ops()  # the tests call torch.ops.empas.* directly too

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# (rows, cols, group_size): 128, 32, per channel (0), and groups not dividing cols
CASES = [(8, 256, 128), (6, 96, 32), (5, 70, 0), (7, 300, 128), (3, 45, 32), (4, 13, 5)]


def same_packed(a: PackedWeight, b: PackedWeight) -> bool:
    return (
        torch.equal(a.qweight, b.qweight)
        and same_bits(a.scales, b.scales)
        and (a.zeros is None) == (b.zeros is None)
        and (a.zeros is None or torch.equal(a.zeros, b.zeros))
        and (a.bits, a.group_size, a.shape, a.symmetric)
        == (b.bits, b.group_size, b.shape, b.symmetric)
    )


def expected_nbytes(rows, cols, bits, g, symmetric):
    ge = cols if g <= 0 or g > cols else g
    ng = -(-cols // ge) if cols else 0
    return -(-rows * cols * bits // 8) + rows * ng * (2 + (0 if symmetric else 1))


# -- bit-identical to the reference and to fake_quant ----------------------------------


@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "asym"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_op_matches_reference_and_fake_quant(dtype, symmetric):
    checked = 0
    for rows, cols, g in CASES:
        w = weights((rows, cols), dtype, seed=rows * 1000 + cols)
        for bits in range(2, 9):
            for clip in (False, True):
                args = (bits, g, symmetric, clip)
                pw = pack(w, *args)
                ref = pack_reference(w, *args)
                assert same_packed(pw, ref), (rows, cols, args)
                assert pw.qweight.numel() == -(-rows * cols * bits // 8)
                assert pw.nbytes == expected_nbytes(rows, cols, bits, g, symmetric)
                out = dequant(pw, dtype)
                assert same_bits(out, dequant_reference(pw, dtype)), (rows, cols, args)
                assert same_bits(out, fake_quant(w, *args)), (rows, cols, args)
                checked += 1
    assert checked == len(CASES) * 7 * 2


@pytest.mark.parametrize("src", DTYPES, ids=str)
def test_dequant_output_dtypes(src):
    """Any output dtype: the fp32 result rounded to it (so == fake_quant's when
    the dtypes agree)."""
    w = weights((6, 100), src, seed=1)
    for symmetric in (True, False):
        pw = pack(w, 3, 32, symmetric)
        f32 = dequant(pw)
        assert f32.dtype == torch.float32 and f32.shape == (6, 100)
        for out in DTYPES:
            got = dequant(pw, out)
            assert same_bits(got, f32.to(out))
            assert same_bits(got, dequant_reference(pw, out))


def test_bit_stream_layout_by_hand():
    # 3 bits, per channel: m = -1 -> d = 0.25; q = -4, 3 (clamped), 2, 1 -> codes 0, 7, 6, 5:
    # bits 000 111 11|0 101 -> bytes 0b10111000, 0b00001011.
    pw = pack(torch.tensor([[-1.0, 1.0, 0.5, 0.2]]), 3, 0)
    assert pw.qweight.tolist() == [0xB8, 0x0B]
    assert pw.scales.tolist() == [[0.25]] and pw.zeros is None
    assert dequant(pw).tolist() == [[-1.0, 0.75, 0.5, 0.25]]
    # Rows sharing bytes: 3x3 at 3 bits, asymmetric per row with s = 1, z = 0: codes = w.
    w = torch.tensor([[0.0, 7, 1], [2, 7, 0], [7, 3, 0]])
    pw = pack(w, 3, 0, symmetric=False)
    stream = sum(int(v) << (3 * e) for e, v in enumerate(w.flatten().tolist()))
    assert pw.qweight.tolist() == [(stream >> (8 * k)) & 0xFF for k in range(4)]
    assert pw.zeros.tolist() == [[0], [0], [0]] and pw.scales.tolist() == [[1.0]] * 3
    assert torch.equal(dequant(pw), w)
    assert same_packed(pack_reference(w, 3, 0, symmetric=False), pw)


def test_constant_asymmetric_groups():
    """fake_quant keeps a group whose scale rounds to 0; packing stores fp16(min)."""
    w = torch.tensor([[0.7, 0.7, 0.7, 0.1, -0.2, 0.3, 1e-9, 1e-9, 1e-9]])
    for clip in (False, True):
        for fn in (pack, pack_reference):
            pw = fn(w, 4, 3, symmetric=False, clip_search=clip)
            assert pw.zeros[0, 0] == 0 and pw.zeros[0, 2] == 0
            assert pw.scales[0, 0].item() == torch.tensor(0.7).half().item()
            assert pw.scales[0, 2].item() == 0.0
            out = dequant(pw)
            fq = fake_quant(w, 4, 3, symmetric=False, clip_search=clip)
            assert torch.equal(out[0, :3], torch.tensor(0.7).half().float().expand(3))
            assert same_bits(out[:, 3:6], fq[:, 3:6])
            assert torch.equal(out[0, 6:], torch.zeros(3)) and not torch.signbit(out[0, 6:]).any()
        assert same_packed(pack(w, 4, 3, False, clip), pack_reference(w, 4, 3, False, clip))


def test_non_contiguous_and_empty():
    conv = weights((96, 40), torch.float16, seed=2)  # a GPT-2 Conv1D weight [in, out]
    view = conv.t()
    assert not view.is_contiguous()
    pw = pack(view, 5, 32, False, True)
    assert same_packed(pw, pack(view.contiguous(), 5, 32, False, True))
    assert same_packed(pw, pack_reference(view, 5, 32, False, True))
    for shape in [(0, 5), (5, 0)]:
        for fn in (pack, pack_reference):
            e = fn(torch.empty(shape), 4, 128, symmetric=False)
            assert e.qweight.numel() == 0 and e.nbytes == expected_nbytes(*shape, 4, 128, False)
            assert dequant(e).shape == shape and dequant_reference(e).shape == shape


def test_same_result_for_any_thread_count():
    w = weights((1001, 77), seed=3)  # 77 * 3 bits: rows start on a byte boundary every 8 rows
    n = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = pack(w, 3, 32, False, True)
        out = dequant(one, torch.float16)
        torch.set_num_threads(max(2, n))
        assert same_packed(pack(w, 3, 32, False, True), one)
        assert same_bits(dequant(one, torch.float16), out)
    finally:
        torch.set_num_threads(n)


def test_nbytes_formula():
    for rows, cols, g in [(64, 128, 128), (4096, 4096, 128), (7, 300, 0), (3, 45, 32)]:
        for bits in (2, 3, 4, 8):
            for symmetric in (True, False):
                meta = torch.ops.empas.quantize_pack(
                    torch.empty(rows, cols, device="meta"), bits, g, symmetric, False
                )
                zeros = None if symmetric else meta[2]
                pw = PackedWeight(meta[0], meta[1], zeros, bits, g, (rows, cols), symmetric)
                assert pw.nbytes == expected_nbytes(rows, cols, bits, g, symmetric)
    # 4096 x 4096 at 4 bits, g = 128: 8 MiB of codes + 128 KiB of fp16 scales
    assert expected_nbytes(4096, 4096, 4, 128, True) == 8 * 2**20 + 4096 * 32 * 2


# -- torch integration --------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_opcheck(dtype):
    w = weights((8, 100), dtype, seed=7)
    kw = {"group_size": 32, "symmetric": False, "clip_search": True}
    torch.library.opcheck(torch.ops.empas.quantize_pack.default, (w, 3), kw)
    torch.library.opcheck(torch.ops.empas.quantize_pack.default, (w, 4))  # schema defaults
    for symmetric in (True, False):
        q, s, z = torch.ops.empas.quantize_pack(w, 3, 32, symmetric, False)
        zeros = z if not symmetric else None
        args = (q, s, zeros, 3, 8, 100, 32, dtype)
        torch.library.opcheck(torch.ops.empas.dequant.default, args)


def test_meta_tensors_give_shapes():
    m = torch.empty(5, 70, device="meta", dtype=torch.bfloat16)
    q, s, z = torch.ops.empas.quantize_pack(m, 3, 32, False, False)
    assert q.shape == (-(-5 * 70 * 3 // 8),) and q.dtype == torch.uint8 and q.device.type == "meta"
    assert s.shape == (5, 3) and s.dtype == torch.float16 and z.shape == (5, 3)
    assert torch.ops.empas.quantize_pack(m, 3, 32, True, False)[2].shape == (0,)
    out = torch.ops.empas.dequant(q, s, z, 3, 5, 70, 32, torch.float16)
    assert out.shape == (5, 70) and out.dtype == torch.float16 and out.device.type == "meta"
    with pytest.raises(
        RuntimeError, match="qweight has 132 bytes, expected 175 for 5x70 at 4 bits"
    ):
        torch.ops.empas.dequant(q, s, z, 4, 5, 70, 32, torch.float16)


# -- errors ---------------------------------------------------------------------------


@pytest.mark.parametrize("fn", [pack, pack_reference], ids=["op", "reference"])
def test_pack_errors(fn):
    w = torch.randn(4, 64)
    for bits in (1, 9, 16, 0):
        with pytest.raises(ValueError, match=f"bits must be in 2..8 for packing, got {bits}"):
            fn(w, bits)
    for bits in ("4", 4.0, True):
        with pytest.raises(ValueError, match="bits must be an int in 2..8"):
            fn(w, bits)
    with pytest.raises(ValueError, match="float32, float16 or bfloat16, got torch.float64"):
        fn(w.double(), 4)
    with pytest.raises(ValueError, match=r"2-D weight .* got shape \(2, 3, 4\)"):
        fn(torch.randn(2, 3, 4), 4)
    for bad in (float("nan"), float("inf")):
        v = w.clone()
        v[2, 5] = bad
        for symmetric in (True, False):
            with pytest.raises(ValueError, match="weight contains NaN or Inf"):
                fn(v, 4, 32, symmetric)
    with pytest.raises(ValueError, match="overflows fp16"):
        fn(torch.tensor([[1e6, -3.0]]), 2, 0)
    with pytest.raises(ValueError, match="overflows fp16"):  # a constant group beyond fp16
        fn(torch.tensor([[1e6, 1e6]]), 8, 0, symmetric=False)


@pytest.mark.parametrize("fn", [dequant, dequant_reference], ids=["op", "reference"])
def test_dequant_errors(fn):
    pw = pack(weights((64, 128)), 4, 128, symmetric=False)
    bad = PackedWeight(pw.qweight[:-1], pw.scales, pw.zeros, 4, 128, (64, 128), False)
    with pytest.raises(
        ValueError, match="qweight has 4095 bytes, expected 4096 for 64x128 at 4 bits"
    ):
        fn(bad)
    bad = PackedWeight(pw.qweight, pw.scales, pw.zeros, 3, 128, (64, 128), False)
    with pytest.raises(
        ValueError, match="qweight has 4096 bytes, expected 3072 for 64x128 at 3 bits"
    ):
        fn(bad)
    bad = PackedWeight(pw.qweight, pw.scales, pw.zeros, 4, 32, (64, 128), False)
    with pytest.raises(ValueError, match=r"scales must .*\[64, 4\]"):
        fn(bad)
    bad = PackedWeight(pw.qweight, pw.scales.float(), pw.zeros, 4, 128, (64, 128), False)
    with pytest.raises(ValueError, match="scales must"):
        fn(bad)
    bad = PackedWeight(pw.qweight, pw.scales, pw.zeros[:32], 4, 128, (64, 128), False)
    with pytest.raises(ValueError, match=r"zeros must .*\[64, 1\]"):
        fn(bad)
    for bits in (1, 9):
        with pytest.raises(ValueError, match=f"bits must be in 2..8, got {bits}"):
            fn(PackedWeight(pw.qweight, pw.scales, pw.zeros, bits, 128, (64, 128), False))
    for dtype in (torch.float64, torch.int32, "float16"):
        with pytest.raises(ValueError, match="dtype must be torch.float32, torch.float16 or"):
            fn(pw, dtype)
    with pytest.raises(TypeError, match="PackedWeight"):
        fn(pw.qweight)


def test_raw_op_messages():
    q, s, z = torch.ops.empas.quantize_pack(weights((64, 128)), 4, 128, False, False)
    with pytest.raises(
        RuntimeError,
        match="empas::dequant: qweight has 4095 bytes, expected 4096 for 64x128 at 4 bits",
    ):
        torch.ops.empas.dequant(q[:-1], s, z, 4, 64, 128, 128, torch.float32)
    with pytest.raises(RuntimeError, match="empas::dequant: qweight must be uint8, got Char"):
        torch.ops.empas.dequant(q.to(torch.int8), s, z, 4, 64, 128, 128, torch.float32)
    with pytest.raises(RuntimeError, match="empas::dequant: zeros must be uint8, got Int"):
        torch.ops.empas.dequant(q, s, z.int(), 4, 64, 128, 128, torch.float32)
    with pytest.raises(
        RuntimeError, match="empas::dequant: dtype must be float32, float16 or bfloat16"
    ):
        torch.ops.empas.dequant(q, s, z, 4, 64, 128, 128, torch.float64)
    with pytest.raises(RuntimeError, match="empas::dequant: rows and cols must be >= 0"):
        torch.ops.empas.dequant(q, s, z, 4, -64, 128, 128, torch.float32)
    with pytest.raises(RuntimeError, match=r"empas::quantize_pack: bits must be in 2\.\.8, got 1"):
        torch.ops.empas.quantize_pack(torch.randn(2, 2), 1)
    with pytest.raises(RuntimeError, match="weight contains NaN or Inf"):
        torch.ops.empas.quantize_pack(torch.tensor([[float("nan"), 1.0]]), 4)
    # symmetric: zeros None or empty
    q, s, z = torch.ops.empas.quantize_pack(weights((4, 16)), 4, 128, True, False)
    assert z.shape == (0,) and z.dtype == torch.uint8
    a = torch.ops.empas.dequant(q, s, None, 4, 4, 16, 128, torch.float32)
    assert same_bits(a, torch.ops.empas.dequant(q, s, z, 4, 4, 16, 128, torch.float32))


# -- GPU ---------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cuda_ops_match_cpu(dtype):
    assert empas.build_info()["cuda"], "the ops were built without CUDA kernels"
    for shape, g in [((1, 1), 128), ((37, 129), 32), ((64, 4096), 128), ((8, 3000), 0)]:
        w = weights(shape, dtype, seed=8)
        for bits in range(2, 9):
            for symmetric in (True, False):
                expect = pack(w, bits, g, symmetric, True)
                got = pack(w.cuda(), bits, g, symmetric, True)
                assert got.qweight.is_cuda and got.scales.is_cuda
                cpu = PackedWeight(
                    got.qweight.cpu(),
                    got.scales.cpu(),
                    None if got.zeros is None else got.zeros.cpu(),
                    bits,
                    g,
                    got.shape,
                    symmetric,
                )
                assert same_packed(cpu, expect), (shape, bits, symmetric)
                for out in DTYPES:
                    d = dequant(got, out)
                    assert d.is_cuda and same_bits(d.cpu(), dequant(expect, out)), (
                        shape,
                        bits,
                        out,
                    )
                    assert same_bits(dequant_reference(got, out).cpu(), dequant(expect, out))


@pytest.mark.gpu
def test_cuda_errors_and_opcheck():
    w = torch.randn(8, 100, device="cuda")
    torch.library.opcheck(torch.ops.empas.quantize_pack.default, (w, 4), {"group_size": 32})
    q, s, z = torch.ops.empas.quantize_pack(w, 4, 32, False, False)
    torch.library.opcheck(torch.ops.empas.dequant.default, (q, s, z, 4, 8, 100, 32, torch.float16))
    with pytest.raises(RuntimeError, match="scales is on cpu but qweight is on cuda"):
        torch.ops.empas.dequant(q, s.cpu(), z, 4, 8, 100, 32, torch.float16)
    w[3, 3] = float("nan")
    with pytest.raises(ValueError, match="weight contains NaN or Inf"):
        pack(w, 4)
