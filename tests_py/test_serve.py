"""empas.serve: the plan server on the tiny trained model, started for real on
loopback and driven over HTTP (generation, plans, health, limits, concurrency,
errors), and PlanServer itself (shared tensors, packed bytes, bad setups)."""

from __future__ import annotations

import copy
import json
import re
import threading
import time

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

import empas  # noqa: E402
from empas.serve import (  # noqa: E402
    Limits,
    PlanServer,
    RequestError,
    ServeError,
    bind_socket,
    run,
    serve_in_thread,
)
from empas.verify import uniform_plan  # noqa: E402

PROMPT = "The for statement is used to iterate over the elements of a sequence"
LIMITS = dict(max_concurrency=2, max_queue=8, max_new_tokens=48)


def _load(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path)


@pytest.fixture(scope="module")
def plans(tiny_profile):
    """uniform int8, uniform int2 and the exact front's balanced archetype."""
    res = empas.search(tiny_profile, method="exact")
    return [
        uniform_plan(tiny_profile, 8),
        uniform_plan(tiny_profile, 2),
        res.archetypes["balanced"],
    ]


@pytest.fixture(scope="module")
def report_doc():
    """A small empas.verify/1 report: measured rows for two of the plans."""
    return {
        "format": "empas.verify/1",
        "meta": {},
        "rows": [
            {"name": "uniform-int8", "kind": "uniform", "loss": 3.1, "ppl": 22.2, "delta": 0.01,
             "bytes": 123},
            {"name": "uniform-fp16", "kind": "uniform", "loss": 3.0, "ppl": 20.1, "delta": 0.0,
             "bytes": 456},
        ],
    }  # fmt: skip


@pytest.fixture(scope="module")
def server(tiny_model_path, plans, report_doc):
    return PlanServer(tiny_model_path, plans, report=report_doc, limits=Limits(**LIMITS))


@pytest.fixture(scope="module")
def live(server):
    """The HTTP server, for real, on a free loopback port; shut down at the end."""
    with serve_in_thread(server, port=0) as bg:
        with httpx.Client(base_url=bg.url, timeout=60) as client:
            yield bg, client
    assert not bg.thread.is_alive()


# -- PlanServer ---------------------------------------------------------------------


def test_plans_loaded_and_named(server):
    assert server.plan_names == ["uniform-int8", "uniform-int2", "balanced", "fp16"]
    assert server.default_plan == "uniform-int8"
    assert server.context == 64 and server.max_prompt_tokens == 63


def test_variants_share_unquantized_tensors(server, plans, tiny_profile):
    models = [v.model for v in server.variants.values()]
    for attr in ("model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"):
        ptrs = {m.get_parameter(attr).data_ptr() for m in models}
        assert len(ptrs) == 1, attr
    # each variant holds its own linears, of the plan's kind
    q = [m.get_submodule("model.layers.1.mlp.down_proj") for m in models[:2]]
    assert [type(x).__name__ for x in q] == ["PackedLinear", "PackedLinear"]
    assert q[0].qweight.data_ptr() != q[1].qweight.data_ptr()
    fp16 = server.variants["fp16"].model.get_submodule("model.layers.0.self_attn.q_proj")
    assert type(fp16).__name__ == "HalfLinear"
    # no variant keeps an nn.Linear inside the blocks: the fp32 weights are gone
    for m in models:
        assert not any(
            type(mod).__name__ == "Linear" for n, mod in m.named_modules() if ".layers." in n
        )
    # packed bytes = the plan's predicted bytes (plans without dropped blocks)
    info = {i["name"]: i for i in server.plans_info()}
    for name, bits in (("uniform-int8", 8), ("uniform-int2", 2)):
        assert info[name]["packed_bytes"] == uniform_plan(tiny_profile, bits).predicted_bytes
        assert info[name]["packed_bytes"] == info[name]["predicted"]["bytes"]
    if 16 in tiny_profile.choices:
        assert info["fp16"]["packed_bytes"] == uniform_plan(tiny_profile, 16).predicted_bytes
    # everything held once: the shared tensors plus each plan's own packed linears
    shared = info["uniform-int8"]["packed_bytes"] - info["uniform-int8"]["own_bytes"]
    assert shared == info["fp16"]["packed_bytes"] - info["fp16"]["own_bytes"]
    assert server.weight_bytes() == shared + sum(i["own_bytes"] for i in info.values())


def test_identical_plans_share_one_model(tiny_model_path, tiny_profile):
    """Plans with the same bits (e.g. max_compression = uniform int2, or a loaded
    uniform fp16 next to the built-in fp16) are packed once and served by one model."""
    p2 = uniform_plan(tiny_profile, 2)
    s = PlanServer(
        tiny_model_path,
        {"int2": p2, "max_compression": uniform_plan(tiny_profile, 2),
         "uniform-fp16": uniform_plan(tiny_profile, 16)},
    )  # fmt: skip
    v = s.variants
    assert v["int2"].model is v["max_compression"].model
    assert v["fp16"].model is v["uniform-fp16"].model
    info = {i["name"]: i for i in s.plans_info()}
    assert info["max_compression"]["own_bytes"] == 0 and info["fp16"]["own_bytes"] == 0
    assert info["max_compression"]["packed_bytes"] == p2.predicted_bytes
    assert (
        s.weight_bytes()
        == PlanServer(
            tiny_model_path, {"int2": p2, "uniform-fp16": uniform_plan(tiny_profile, 16)}
        ).weight_bytes()
    )
    a = s.generate("The for statement", plan="int2", max_new_tokens=6)
    b = s.generate("The for statement", plan="max_compression", max_new_tokens=6)
    assert a["token_ids"] == b["token_ids"] and b["plan"] == "max_compression"


def test_plans_info_predicted_and_measured(server, plans):
    info = {i["name"]: i for i in server.plans_info()}
    assert info["uniform-int8"]["measured"] == {
        "loss": 3.1,
        "ppl": 22.2,
        "delta": 0.01,
        "bytes": 123,
    }
    assert info["fp16"]["measured"]["loss"] == 3.0  # matched through its archetype uniform-fp16
    assert info["fp16"]["archetype"] == "uniform-fp16"
    assert info["balanced"]["measured"] is None
    bal = plans[2]
    assert info["balanced"]["predicted"] == {
        "loss": bal.predicted_loss, "bytes": bal.predicted_bytes, "avg_bits": bal.predicted_avg_bits
    }  # fmt: skip
    assert info["balanced"]["bits"] == bal.bits_by_unit
    assert info["uniform-int8"]["default"] and not info["fp16"]["default"]


def test_fp16_greedy_equals_independent_packed_model(server, tiny_model_path, tiny_profile):
    ref = empas.apply(_load(tiny_model_path), uniform_plan(tiny_profile, 16), mode="packed").eval()
    out = server.generate(PROMPT, plan="fp16", max_new_tokens=20)
    req = server.prepare(PROMPT, plan="fp16", max_new_tokens=20)
    ref_ids, _ = server._decode(ref, req, None)
    assert out["token_ids"] == ref_ids
    # and the KV-cache loop agrees with full recomputation on the reference model
    ids, new = list(req.ids), []
    with torch.inference_mode():
        for _ in range(20):
            tok = int(ref(torch.tensor([ids + new])).logits[0, -1].argmax())
            if tok in server.eos_ids:
                break
            new.append(tok)
    assert out["token_ids"] == new
    assert out["tokens"] == len(new) and out["plan"] == "fp16"
    assert out["finish_reason"] == ("length" if len(new) == 20 else "eos")


def test_plans_give_different_logits(server):
    ids = torch.tensor([server.tokenizer(PROMPT)["input_ids"]])
    with torch.inference_mode():
        lf = server.variants["fp16"].model(ids).logits
        l8 = server.variants["uniform-int8"].model(ids).logits
        l2 = server.variants["uniform-int2"].model(ids).logits
    assert not torch.equal(lf, l8)
    assert (l2 - lf).abs().max() > (l8 - lf).abs().max()


def test_dropped_first_block_cache_matches_recompute(tiny_model_path, tiny_profile):
    """A dropped block leaves its cache layer empty; the loop passes positions itself."""
    plan = tiny_profile.plan([0, 4, 8, 0], archetype="drops")
    s = PlanServer(tiny_model_path, [plan], fp16=False)
    out = s.generate(PROMPT, max_new_tokens=16)
    model, ids, new = s.variants["drops"].model, s.prepare(PROMPT).ids, []
    with torch.inference_mode():
        for _ in range(16):
            tok = int(model(torch.tensor([ids + new])).logits[0, -1].argmax())
            if tok in s.eos_ids:
                break
            new.append(tok)
    assert out["token_ids"] == new
    # the dropped blocks' norms are not held: at most the predicted bytes
    info = s.plans_info()[0]
    assert 0 < info["predicted"]["bytes"] - info["packed_bytes"] <= 2 * 2 * 64 * 4


def test_seeded_sampling_is_reproducible(server):
    kw = dict(plan="fp16", max_new_tokens=24, temperature=0.9, top_p=0.9)
    a = server.generate(PROMPT, seed=123, **kw)
    b = server.generate(PROMPT, seed=123, **kw)
    assert a["token_ids"] == b["token_ids"] and a["seed"] == 123
    others = {tuple(server.generate(PROMPT, seed=s, **kw)["token_ids"]) for s in (1, 2, 3)}
    assert len(others | {tuple(a["token_ids"])}) > 1
    state = torch.random.get_rng_state()
    server.generate(PROMPT, seed=5, **kw)
    assert torch.equal(state, torch.random.get_rng_state())  # the global RNG is untouched
    unseeded = server.generate(PROMPT, **kw)
    assert isinstance(unseeded["seed"], int)
    again = server.generate(PROMPT, seed=unseeded["seed"], **kw)
    assert again["token_ids"] == unseeded["token_ids"]


def test_model_object_is_not_modified(tiny_model_path, plans):
    from transformers import AutoTokenizer

    model = _load(tiny_model_path)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    s = PlanServer(model, plans[:1], tokenizer=AutoTokenizer.from_pretrained(tiny_model_path))
    assert s.plan_names == ["uniform-int8", "fp16"]
    assert type(model.get_submodule("model.layers.0.mlp.up_proj")).__name__ == "Linear"
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert s.variants["fp16"].model.model.embed_tokens.weight is model.model.embed_tokens.weight


def test_bad_setups(tiny_model_path, plans, tmp_path):
    with pytest.raises(ServeError, match="default plan 'nope' is not loaded; plans: uniform-int8"):
        PlanServer(tiny_model_path, plans[:1], default_plan="nope")
    with pytest.raises(ServeError, match="no plans"):
        PlanServer(tiny_model_path, [])
    with pytest.raises(ServeError, match="share the name"):
        PlanServer(tiny_model_path, [plans[0], plans[0]])
    with pytest.raises(ServeError, match="empas.verify/1"):
        PlanServer(tiny_model_path, plans[:1], report={"format": "x"})
    with pytest.raises(ServeError, match="no plan files"):
        PlanServer(tiny_model_path, [tmp_path])
    with pytest.raises(ServeError, match="max_concurrency"):
        Limits(max_concurrency=0)
    d = plans[0].to_dict()
    d["units"][1]["modules"] = [m.replace("layers.1", "layers.7") for m in d["units"][1]["modules"]]
    with pytest.raises(empas.PlanMismatchError, match="plan 'other'.*layers.7"):
        PlanServer(tiny_model_path, {"other": d})
    d = plans[0].to_dict()
    d["units"][0]["params"] = 12345
    with pytest.raises(empas.PlanMismatchError, match="plan 'sizes'.*12,345"):
        PlanServer(tiny_model_path, {"sizes": d})


def test_report_file_or_verify_report(tiny_model_path, plans, report_doc, tmp_path):
    """The report is read by VerifyReport: a file or a VerifyReport gives the rows of
    the dict; a bad file is a ServeError naming the file and the field."""
    from empas.verify import VerifyReport

    f = tmp_path / "verify.json"
    f.write_text(json.dumps(report_doc))
    for report in (f, VerifyReport.load(f)):
        s = PlanServer(tiny_model_path, plans[:1], report=report, fp16=False)
        info = {i["name"]: i for i in s.plans_info()}
        assert info["uniform-int8"]["measured"] == {
            "loss": 3.1,
            "ppl": 22.2,
            "delta": 0.01,
            "bytes": 123,
        }
    bad = copy.deepcopy(report_doc)
    bad["rows"][1]["loss"] = None
    f.write_text(json.dumps(bad))
    for report in (f, bad):
        where = re.escape(str(f)) if report is f else "the report"
        with pytest.raises(ServeError, match=f"^{where}: row 'uniform-fp16' has no numeric 'loss'"):
            PlanServer(tiny_model_path, plans[:1], report=report)
    f.write_text("{")
    with pytest.raises(ServeError, match=f"^{re.escape(str(f))}: malformed JSON in verify report"):
        PlanServer(tiny_model_path, plans[:1], report=f)
    with pytest.raises(ServeError, match="verify report not found: .*absent.json"):
        PlanServer(tiny_model_path, plans[:1], report=tmp_path / "absent.json")


def test_plan_files_and_directories(tiny_model_path, plans, tmp_path):
    plans[0].save(tmp_path / "plans" / "a.json")
    p = plans[2].to_dict()
    p["archetype"] = None
    empas.Plan.from_dict(p).save(tmp_path / "plans" / "mine.json")
    s = PlanServer(tiny_model_path, [tmp_path / "plans"], fp16=False, default_plan="mine")
    assert s.plan_names == ["uniform-int8", "mine"] and s.default_plan == "mine"


def test_request_validation_direct(server):
    with pytest.raises(RequestError, match="unknown plan 'x'; available plans: uniform-int8") as e:
        server.prepare(PROMPT, plan="x")
    assert e.value.status == 404
    with pytest.raises(RequestError, match="limit of 48") as e:
        server.prepare(PROMPT, max_new_tokens=49)
    assert e.value.status == 422


# -- over HTTP ------------------------------------------------------------------------


def test_http_health_plans_openapi(live, server):
    _, c = live
    h = c.get("/health").json()
    assert h["status"] == "ok" and h["plans"] == server.plan_names
    assert h["default_plan"] == "uniform-int8" and h["busy"] == 0 and h["queued"] == 0
    assert h["limits"]["max_concurrency"] == 2 and h["limits"]["max_prompt_tokens"] == 63
    assert h["uptime_s"] >= 0 and h["model"] == str(server.model_name)
    p = c.get("/plans").json()
    assert p["default_plan"] == "uniform-int8"
    by = {x["name"]: x for x in p["plans"]}
    assert by["uniform-int8"]["measured"]["ppl"] == 22.2
    assert by["balanced"]["predicted"]["loss"] == pytest.approx(
        server.plans_info()[2]["predicted"]["loss"]
    )
    assert by["uniform-int2"]["packed_bytes"] < by["uniform-int8"]["packed_bytes"]
    spec = c.get("/openapi.json").json()
    assert {"/generate", "/plans", "/health"} <= set(spec["paths"])
    req = spec["components"]["schemas"]["GenerateRequest"]
    assert req["additionalProperties"] is False and "prompt" in req["required"]
    assert c.get("/docs").status_code == 200


def test_http_generate_two_plans(live, server):
    _, c = live
    outs = {}
    for plan in ("fp16", "uniform-int2"):
        r = c.post("/generate", json={"prompt": PROMPT, "max_new_tokens": 12, "plan": plan})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["plan"] == plan and 1 <= body["tokens"] <= 12
        assert body["tokens_per_s"] > 0 and body["latency_ms"] > 0
        assert body["prompt_tokens"] == len(server.tokenizer(PROMPT)["input_ids"])
        assert (
            body["token_ids"] == server.generate(PROMPT, plan=plan, max_new_tokens=12)["token_ids"]
        )
        outs[plan] = body["token_ids"]
    assert outs["fp16"] != outs["uniform-int2"]
    r = c.post("/generate", json={"prompt": PROMPT, "max_new_tokens": 4, "temperature": 0})
    assert r.status_code == 200 and r.json()["plan"] == "uniform-int8"  # default plan; int 0 ok


def test_http_seeded_sampling(live):
    _, c = live
    body = {"prompt": PROMPT, "max_new_tokens": 16, "temperature": 1.0, "top_p": 0.95, "seed": 7}
    a, b = (c.post("/generate", json=body).json() for _ in range(2))
    assert a["text"] == b["text"] and a["seed"] == 7


def _burst(url: str, bodies: list[dict]) -> list[httpx.Response]:
    out: list = [None] * len(bodies)
    start = threading.Barrier(len(bodies))

    def one(i):
        with httpx.Client(base_url=url, timeout=60) as c:
            start.wait()
            out[i] = c.post("/generate", json=bodies[i])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def test_http_concurrent_burst_within_limits(live, server):
    bg, c = live
    plans = ["fp16", "uniform-int8", "uniform-int2", "balanced"] * 2
    bodies = [{"prompt": PROMPT, "max_new_tokens": 16, "plan": p} for p in plans]
    rs = _burst(bg.url, bodies)
    assert [r.status_code for r in rs] == [200] * 8
    for p, r in zip(plans, rs):  # concurrent greedy answers = sequential ones
        assert (
            r.json()["token_ids"] == server.generate(PROMPT, plan=p, max_new_tokens=16)["token_ids"]
        )
    h = c.get("/health").json()
    assert h["busy"] == 0 and h["queued"] == 0


class _Gate:
    """Holds generations until opened (or makes them fail): a deterministic busy server."""

    def __init__(self, inner):
        self.inner, self.open, self.fail = inner, threading.Event(), False

    def __call__(self, req):
        assert self.open.wait(30)
        if self.fail:
            raise RuntimeError("boom")
        return self.inner(req)


def test_http_overload_429_and_500(tiny_model_path, plans):
    s = PlanServer(
        tiny_model_path, plans[:1], fp16=False, limits=Limits(max_concurrency=2, max_queue=2)
    )
    gate = _Gate(s.run_prepared)
    s.run_prepared = gate
    body = {"prompt": PROMPT, "max_new_tokens": 4}
    with serve_in_thread(s) as bg, httpx.Client(base_url=bg.url, timeout=60) as c:
        first: list = []
        threads = [
            threading.Thread(target=lambda: first.append(httpx.post(bg.url + "/generate", json=body, timeout=60)))
            for _ in range(4)
        ]  # fmt: skip
        for t in threads:
            t.start()
        deadline = time.monotonic() + 20
        while (h := c.get("/health").json())["busy"] + h["queued"] < 4:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert (h["busy"], h["queued"]) == (2, 2)
        over = [c.post("/generate", json=body) for _ in range(3)]
        for r in over:
            assert r.status_code == 429
            assert int(r.headers["Retry-After"]) >= 1
            assert "max_concurrency 2, max_queue 2" in r.json()["detail"]
        gate.open.set()
        for t in threads:
            t.join()
        assert [r.status_code for r in first] == [200] * 4
        gate.fail = True
        r = c.post("/generate", json=body)
        assert r.status_code == 500 and "RuntimeError: boom" in r.json()["detail"]
        gate.fail = False
        assert c.post("/generate", json=body).status_code == 200
        h = c.get("/health").json()
        assert h["status"] == "ok" and h["busy"] == 0 and h["queued"] == 0


@pytest.mark.parametrize(
    ("body", "status", "match"),
    [
        (
            {"prompt": PROMPT, "plan": "nope"},
            404,
            "unknown plan 'nope'; available plans: uniform-int8",
        ),
        ({"prompt": "x" * 4001}, 413, "limit is 4,000 \\(max_prompt_chars\\)"),
        ({"prompt": "lambda " * 100}, 413, "limit is 63 \\(max_prompt_tokens\\)"),
        ({"prompt": PROMPT, "max_new_tokens": 48}, 413, "over the model context of 64 tokens"),
        ({"prompt": PROMPT, "max_new_tokens": 49}, 422, "limit of 48 \\(max_new_tokens\\)"),
        ({"prompt": PROMPT, "max_new_tokens": "ten"}, 422, "max_new_tokens"),
        ({"prompt": PROMPT, "max_new_tokens": True}, 422, "max_new_tokens"),
        ({"prompt": PROMPT, "max_new_tokens": 0}, 422, "greater than or equal to 1"),
        ({"prompt": PROMPT, "temperature": "hot"}, 422, "temperature"),
        ({"prompt": PROMPT, "top_p": 1.5}, 422, "top_p"),
        ({"prompt": PROMPT, "seed": -1}, 422, "seed"),
        ({"prompt": PROMPT, "stream": True}, 422, "Extra inputs are not permitted"),
        ({"prompt": ""}, 422, "at least 1 character"),
        ({"max_new_tokens": 4}, 422, "Field required"),
        ({"prompt": 12}, 422, "valid string"),
    ],
)
def test_http_bad_requests(live, body, status, match):
    _, c = live
    r = c.post("/generate", json=body)
    assert r.status_code == status, r.text
    assert re.search(match, json.dumps(r.json()["detail"])), r.json()


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        ('{"prompt": "hi", "temperature": NaN}', "temperature"),
        ('{"prompt": "hi", "temperature": Infinity}', "temperature"),
        ('{"prompt": "hi", "temperature": -Infinity}', "temperature"),
        ('{"prompt": "hi", "top_p": NaN}', "top_p"),
        ('{"prompt": "hi", "top_p": Infinity}', "top_p"),
        ('{"prompt": "\\ud800 lone"}', "string_unicode"),
        ('{"prompt": "ok \\udfff"}', "string_unicode"),
    ],
)
def test_http_non_finite_numbers_and_lone_surrogates_are_422(live, raw, match):
    """NaN/Infinity literals gave a 500 (the 422 body could not be encoded), as did
    a lone surrogate in the prompt; the server stays healthy."""
    _, c = live
    r = c.post("/generate", content=raw.encode(), headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    assert re.search(match, r.text), r.text
    assert c.get("/health").json()["status"] == "ok"


def test_direct_lone_surrogate_and_non_finite_are_request_errors(server):
    for kw, match in [
        ({"prompt": "a \ud800 b"}, "lone surrogate at character 2"),
        ({"prompt": PROMPT, "temperature": float("nan")}, "temperature"),
        ({"prompt": PROMPT, "temperature": float("inf")}, "temperature"),
        ({"prompt": PROMPT, "top_p": float("nan")}, "top_p"),
    ]:
        with pytest.raises(RequestError, match=match) as info:
            server.generate(**kw)
        assert info.value.status == 422


def test_http_tiny_temperature_samples_the_argmax(live):
    """temperature 1e-300 sent inf/NaN into multinomial (500); it is the greedy
    limit: the same text as temperature 0."""
    _, c = live
    base = {"prompt": PROMPT, "max_new_tokens": 6, "seed": 1}
    greedy = c.post("/generate", json={**base, "temperature": 0.0})
    tiny = c.post("/generate", json={**base, "temperature": 1e-300})
    assert greedy.status_code == 200 and tiny.status_code == 200, tiny.text
    assert tiny.json()["text"] == greedy.json()["text"]
    tiny_p = c.post("/generate", json={**base, "temperature": 1e-300, "top_p": 0.5})
    assert tiny_p.status_code == 200 and tiny_p.json()["text"] == greedy.json()["text"]


def test_http_oversized_body_is_413_before_parsing(live, server):
    """A body over max_body_bytes gets 413, by Content-Length or while a chunked
    body streams in; the server keeps answering."""
    bg, c = live
    limit = server.limits.max_body_bytes
    big = '{"prompt": "' + "x" * (limit + 10) + '"}'
    r = c.post("/generate", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "max_body_bytes" in r.json()["detail"]

    def chunks():
        yield b'{"prompt": "'
        for _ in range(limit // 1000 + 2):
            yield b"y" * 1000
        yield b'"}'

    r = c.post("/generate", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and "max_body_bytes" in r.json()["detail"]
    assert c.get("/health").json()["status"] == "ok"


def test_http_malformed_json_and_health_after(live):
    _, c = live
    r = c.post(
        "/generate", content=b'{"prompt": "abc", ', headers={"content-type": "application/json"}
    )
    assert r.status_code == 422 and "json_invalid" in r.text
    r = c.post("/generate", content=b"[1, 2]", headers={"content-type": "application/json"})
    assert r.status_code == 422
    assert c.get("/health").json()["status"] == "ok"
    assert c.post("/generate", json={"prompt": PROMPT, "max_new_tokens": 2}).status_code == 200


def test_port_in_use(live, tiny_model_path, plans):
    bg, _ = live
    port = bg.sock.getsockname()[1]
    msg = f"127.0.0.1:{port} is already in use \\(another empas serve\\?\\); pick another --port"
    with pytest.raises(ServeError, match=msg):
        bind_socket("127.0.0.1", port)
    with pytest.raises(ServeError, match=msg):
        run(tiny_model_path, plans[:1], port=port, fp16=False, log_level="warning")


def test_run_reports_plan_errors_before_binding(live, tiny_model_path, plans):
    bg, _ = live
    port = bg.sock.getsockname()[1]
    with pytest.raises(ServeError, match="default plan 'x'"):  # not "port in use"
        run(tiny_model_path, plans[:1], port=port, default_plan="x", log_level="warning")


def test_variants_are_deep_copies_not_the_base(server):
    a, b = (server.variants[n].model for n in ("uniform-int8", "fp16"))
    assert a is not b and a.model.layers is not b.model.layers
    assert copy.copy(server.limits) == server.limits


# -- the command line -------------------------------------------------------------


@pytest.fixture
def int4_plan_file(tiny_profile, tmp_path):
    from empas.verify import uniform_plan

    return uniform_plan(tiny_profile, 4).save(tmp_path / "int4.json")


def test_cli_serve_port_in_use_and_bad_plans_exit_2(
    tiny_model_path, int4_plan_file, tmp_path, capsys
):
    """`empas serve` reports setup problems with exit code 2 and a clear message."""
    import socket

    from empas.cli import main

    model = str(tiny_model_path)
    assert main(["serve", model]) == 2
    assert "no plans to serve" in capsys.readouterr().err

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        rc = main(["serve", model, "--plans", str(int4_plan_file), "--port", str(port)])
    assert rc == 2
    assert f"127.0.0.1:{port} is already in use" in capsys.readouterr().err
    assert main(["serve", model, "--plans", str(tmp_path / "none")]) == 2
    assert "plan file not found" in capsys.readouterr().err
    assert main(["serve", model, "--plans", str(int4_plan_file), "--default-plan", "nope"]) == 2
    assert "nope" in capsys.readouterr().err


def test_cli_serve_as_a_subprocess(tiny_model_path, int4_plan_file, tmp_path):
    """The installed `empas serve` command, for real: it answers on loopback and a
    Ctrl-C (SIGINT) shuts it down cleanly with exit code 0."""
    import signal
    import socket
    import subprocess
    import sys
    import time

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = tmp_path / "serve.yaml"
    cfg.write_text(
        f"serve:\n  model: {tiny_model_path}\n  plans: [{int4_plan_file}]\n  port: {port}\n"
        "  max_new_tokens: 8\n  default_plan: fp16\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "empas.cli", "serve", "--config", str(cfg)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except httpx.TransportError:
                assert proc.poll() is None, proc.stdout.read()
                assert time.monotonic() < deadline, "server did not start"
                time.sleep(0.3)
        assert r.status_code == 200 and r.json()["status"] == "ok"
        g = httpx.post(
            f"http://127.0.0.1:{port}/generate",
            json={"prompt": "The for statement", "max_new_tokens": 4},
            timeout=60,
        )
        assert g.status_code == 200 and g.json()["plan"] == "fp16"
        too_many = httpx.post(
            f"http://127.0.0.1:{port}/generate",
            json={"prompt": "x", "max_new_tokens": 9},
            timeout=60,
        )
        assert too_many.status_code == 422 and "8" in too_many.text  # the config's cap
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert "serving on http://127.0.0.1:" in out
