"""The Serve app over real HTTP: plain requests and the real `openai` client, every bad-input kind,
adapters that differ, and a replica that keeps serving after client mistakes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests

from socrates_ray.config import load_config

pytestmark = pytest.mark.ray

PORT = 8123
URL = f"http://127.0.0.1:{PORT}"
TOKEN = "test-token-123"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
STIMULUS = "How fair is this proposal? Only return an integer from 1 to 7, where 1 means Not at all and 7 means Very, nothing else."


@pytest.fixture(scope="module")
def adapters(tiny_model, tmp_path_factory, make_adapter) -> Path:
    """The app's adapters_dir: a1 and a2."""
    folder = tmp_path_factory.mktemp("adapters")
    make_adapter(tiny_model, folder / "a1", seed=1)
    make_adapter(tiny_model, folder / "a2", seed=2)
    return folder


@pytest.fixture(scope="module", params=["transformers", "vllm"])
def app(request, ray_local, tiny_model, adapters, monkeypatch_module):
    """The app on each inference engine: every test below holds for both (model.engine)."""
    from ray import serve

    from socrates_ray.serve.app import build_app, serve_launch, start_serve

    monkeypatch_module.setenv("SOCRATES_TEST_TOKEN", TOKEN)
    cfg = load_config(None, [
        f"model.engine={request.param}", f"serve.port={PORT}", f"serve.adapters_dir={adapters}", "serve.auth_token_env=SOCRATES_TEST_TOKEN",
        "serve.max_body_bytes=20000", "serve.max_n=8", "serve.max_tokens_limit=16", "serve.max_length=512",
        "serve.max_batch_size=8", "serve.num_cpus=0.5", "serve.app_name=test_socrates",
    ])
    start_serve(build_app(cfg, str(tiny_model)), serve_launch(cfg))
    yield URL
    serve.shutdown()


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def post(path: str, body, **kw) -> requests.Response:
    data = body if isinstance(body, (str, bytes)) else json.dumps(body)
    return requests.post(URL + path, data=data, headers={**AUTH, "Content-Type": "application/json"}, timeout=120, **kw)


def test_health_models_and_distribution(app) -> None:
    assert requests.get(URL + "/healthz", timeout=30).json()["status"] == "ok"
    models = requests.get(URL + "/v1/models", headers=AUTH, timeout=30).json()
    assert [m["id"] for m in models["data"]] == ["base", "a1", "a2"]
    r = post("/v1/predict", {"persona": {"age": 40, "gender": "Female"}, "stimulus": STIMULUS})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["options"] == [1, 2, 3, 4, 5, 6, 7] and body["scale"]["kind"] == "bounded"
    assert sum(body["probs"]) == pytest.approx(1.0, abs=1e-6)


def test_distribution_temperature_above_two_flattens_and_sampling_keeps_the_cap(app) -> None:
    """A fitted exact-mode temperature (simulate.temperature=auto) can exceed OpenAI's 2."""
    body = {"persona": {"age": 40}, "stimulus": STIMULUS}
    sharp, flat = (post("/v1/predict", body | {"temperature": t}).json()["probs"] for t in (1.0, 8.0))
    assert max(flat) - min(flat) < max(sharp) - min(sharp)
    r = post("/v1/predict", body | {"temperature": 20.5})
    assert r.status_code == 400 and "temperature" in r.text
    r = post("/v1/predict", body | {"mode": "sample", "max_tokens": 4, "temperature": 3})
    assert r.status_code == 400 and "allows temperature <= 2" in r.json()["error"]["message"]


def test_two_adapters_give_different_distributions(app) -> None:
    got = {}
    for adapter in ("base", "a1", "a2"):
        r = post("/v1/predict", {"persona": {"age": 40}, "stimulus": STIMULUS, "adapter": adapter})
        assert r.status_code == 200, r.text
        got[adapter] = r.json()["probs"]
    assert max(abs(a - b) for a, b in zip(got["a1"], got["a2"])) > 1e-3
    assert max(abs(a - b) for a, b in zip(got["base"], got["a1"])) > 1e-3


def test_a_broken_adapter_is_a_named_422_remembered_and_the_base_never_changes(app, adapters) -> None:
    """Adapter folders broken as a careless operator would: each named request is a 422 that says
    what is wrong (never a 500), again on every repeat; the base's answer stays exactly what it was;
    /v1/models lists none of them; a folder that is fixed is loaded on its next use."""
    import shutil

    body = {"persona": {"age": 40}, "stimulus": STIMULUS}
    base = post("/v1/predict", body).json()["probs"]

    def cut(folder: Path) -> None:
        weights = folder / "adapter_model.safetensors"
        weights.write_bytes(weights.read_bytes()[:1000])

    def config(folder: Path, **changes) -> None:
        path = folder / "adapter_config.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), **changes}) if changes else "")

    def dangling(folder: Path) -> None:
        (folder / "adapter_model.safetensors").unlink()
        (folder / "adapter_model.safetensors").symlink_to(folder / "nowhere")

    broken = {"cut": (cut, "truncated"), "empty-config": (config, "not readable JSON"),
              "rank": (lambda f: config(f, r=16), "at rank 16"),
              "targets": (lambda f: config(f, target_modules=["k_proj", "o_proj"]), "target_modules do not match"),
              "dangling": (dangling, "not a regular file")}
    try:
        for name, (breaking, fragment) in broken.items():
            shutil.copytree(adapters / "a1", adapters / name)
            breaking(adapters / name)
            for _ in range(3):
                r = post("/v1/predict", body | {"adapter": name})
                assert r.status_code == 422 and fragment in r.json()["error"]["message"], (name, r.text)
            assert post("/v1/predict", body).json()["probs"] == base, name
        chat = post("/v1/chat/completions", {"model": "rank", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
        assert chat.status_code == 422 and "at rank 16" in chat.json()["error"]["message"]
        models = requests.get(URL + "/v1/models", headers=AUTH, timeout=30).json()
        assert [m["id"] for m in models["data"]] == ["base", "a1", "a2"]
        shutil.copytree(adapters / "a1", adapters / "gone")  # loaded, then its folder deleted: a 404, never a 500
        assert post("/v1/predict", body | {"adapter": "gone"}).status_code == 200
        shutil.rmtree(adapters / "gone")
        r = post("/v1/predict", body | {"adapter": "gone"})
        assert r.status_code == 404 and "unknown adapter 'gone'" in r.json()["error"]["message"], r.text
        shutil.rmtree(adapters / "rank")  # fixed: the remembered failure no longer applies
        shutil.copytree(adapters / "a2", adapters / "rank")
        r = post("/v1/predict", body | {"adapter": "rank"})
        assert r.status_code == 200 and r.json()["probs"] == post("/v1/predict", body | {"adapter": "a2"}).json()["probs"]
    finally:
        for name in [*broken, "gone"]:
            shutil.rmtree(adapters / name, ignore_errors=True)


def test_sample_mode_returns_n_samples(app) -> None:
    r = post("/v1/predict", {"stimulus": STIMULUS, "mode": "sample", "n": 3, "max_tokens": 4, "temperature": 0.6, "top_p": 0.9})
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["samples"]) == 3 and len(body["answers"]) == 3
    assert body["unparsable"] == sum(a is None for a in body["answers"])


def test_openai_client_works_unchanged(app) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=URL + "/v1", api_key=TOKEN, max_retries=0)
    assert {m.id for m in client.models.list()} == {"base", "a1", "a2"}
    out = client.chat.completions.create(
        model="a1", messages=[{"role": "user", "content": STIMULUS}], max_tokens=4, n=2, temperature=0.6, top_p=0.9, logprobs=True,
    )
    assert len(out.choices) == 2
    assert out.choices[0].finish_reason in ("stop", "length")
    assert out.usage.prompt_tokens > 0
    assert out.choices[0].logprobs is not None
    from openai import NotFoundError

    with pytest.raises(NotFoundError):
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}], max_tokens=2)


def test_a_batch_of_rows_scores_each_as_predict_does_and_a_bad_row_gets_its_own_error(app) -> None:
    rows = [{"persona": {"age": 20 + 7 * i, "party_id": ["Strong Democrat", "Independent"][i % 2]}, "stimulus": STIMULUS}
            for i in range(6)]
    rows.insert(2, {"stimulus": "How much would you pay? Only return an integer representing dollars."})  # no scale
    rows.insert(4, {"stimulus": "word " * 900 + STIMULUS})  # over the context
    rows.append({"prompt": "Pick one. Only return an integer from 1 to 3, nothing else.", "options": [1, 2, 3]})
    r = post("/v1/predict/batch", {"rows": rows, "adapter": "a1", "temperature": 0.8})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert len(results) == len(rows) and r.json()["adapter"] == "a1"
    assert "no bounded answer scale" in results[2]["error"]["message"]
    assert results[4]["error"]["code"] == "context_length_exceeded"
    for row, result in zip(rows, results):
        if "error" in result:
            continue
        alone = post("/v1/predict", {**row, "adapter": "a1", "temperature": 0.8}).json()
        # (rows scored in one padded pass round differently from a row alone where the replica runs in bf16)
        assert result["options"] == alone["options"] and result["probs"] == pytest.approx(alone["probs"], abs=0.02)
    assert results[0]["probs"] != pytest.approx(results[1]["probs"], abs=1e-3)  # the persona moves the answer
    assert post("/v1/predict/batch", {"rows": []}).status_code == 400
    assert post("/v1/predict/batch", {"rows": rows[:1], "adapter": "missing"}).status_code == 404
    assert post("/v1/predict/batch", {"rows": [{"stimulus": STIMULUS, "mode": "sample"}]}).status_code == 400  # distributions only


def test_openai_client_streams_a_chat_completion_as_it_answers_whole(app) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=URL + "/v1", api_key=TOKEN, max_retries=0)
    ask = dict(model="a1", messages=[{"role": "user", "content": STIMULUS}], max_tokens=6, temperature=0.0)
    whole = client.chat.completions.create(**ask)
    stream = client.chat.completions.create(**ask, stream=True, stream_options={"include_usage": True}, logprobs=True)
    chunks = list(stream)
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert deltas[0].role == "assistant"
    assert "".join(d.content or "" for d in deltas) == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    streamed_logprobs = [t for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content]
    assert len(streamed_logprobs) == whole.usage.completion_tokens
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == whole.usage.total_tokens
    # the raw stream is server-sent events ending in [DONE]
    raw = requests.post(URL + "/v1/chat/completions", json={**ask, "stream": True}, headers=AUTH, timeout=120, stream=True)
    assert raw.headers["content-type"].startswith("text/event-stream")
    lines = [line for line in raw.iter_lines(decode_unicode=True) if line]
    assert all(line.startswith("data: ") for line in lines) and lines[-1] == "data: [DONE]"


def test_top_logprobs_of_a_survey_answer_hold_the_option_distribution_predict_returns(app) -> None:
    import math

    from openai import OpenAI

    from socrates_ray.data.prompts import build_prompt

    persona = {"age": 52, "gender": "Male", "party_id": "Strong Republican"}
    predicted = post("/v1/predict", {"persona": persona, "stimulus": STIMULUS, "adapter": "a2"}).json()
    client = OpenAI(base_url=URL + "/v1", api_key=TOKEN, max_retries=0)
    out = client.chat.completions.create(model="a2", messages=[{"role": "user", "content": build_prompt(persona, STIMULUS)}],
                                         max_tokens=3, logprobs=True, top_logprobs=20)
    first = out.choices[0].logprobs.content[0].top_logprobs
    assert sorted(int(t.token) for t in first) == predicted["options"]
    from_chat = {int(t.token): math.exp(t.logprob) for t in first}
    assert [from_chat[o] for o in predicted["options"]] == pytest.approx(predicted["probs"], abs=1e-9)
    assert [t.logprob for t in first] == sorted((t.logprob for t in first), reverse=True)
    # top_logprobs=3: the three likeliest options
    three = client.chat.completions.create(model="a2", messages=[{"role": "user", "content": build_prompt(persona, STIMULUS)}],
                                           max_tokens=1, logprobs=True, top_logprobs=3).choices[0].logprobs.content[0].top_logprobs
    assert [t.token for t in three] == [t.token for t in first[:3]]
    # any other chat (here two turns): each token's top_logprobs are the engine's likeliest tokens
    other = client.chat.completions.create(
        model="a2", max_tokens=3, logprobs=True, top_logprobs=5,
        messages=[{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi"}, {"role": "user", "content": STIMULUS}])
    for entry in other.choices[0].logprobs.content:
        values = [t.logprob for t in entry.top_logprobs]
        assert 1 <= len(values) <= 5 and values == sorted(values, reverse=True) and entry.logprob <= values[0] + 1e-6


def test_openai_client_completions_with_logprobs_and_streaming(app) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=URL + "/v1", api_key=TOKEN, max_retries=0)
    prompts = ["The policy would", "Most people think"]
    out = client.completions.create(model="a1", prompt=prompts, n=2, max_tokens=4, temperature=0.8, logprobs=3)
    assert [c.index for c in out.choices] == [0, 1, 2, 3]
    for choice in out.choices:
        lp = choice.logprobs
        assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) <= 4
        assert all(1 <= len(top) <= 3 for top in lp.top_logprobs)
        assert lp.text_offset == sorted(lp.text_offset) and lp.text_offset[-1] <= lp.text_offset[0] + len(choice.text)
    assert out.choices[0].logprobs.text_offset[0] == len(prompts[0])
    assert out.usage.completion_tokens == sum(len(c.logprobs.tokens) for c in out.choices)
    greedy = dict(model="base", prompt=prompts[0], max_tokens=5, temperature=0.0)
    whole = client.completions.create(**greedy).choices[0].text
    assert "".join(c.choices[0].text for c in client.completions.create(**greedy, stream=True) if c.choices) == whole


@pytest.mark.parametrize("route, body, fragment", [
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "top_logprobs": 3}, "needs logprobs=true"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ("/v1/completions", {"prompt": "hi", "echo": True}, "not supported"),
    ("/v1/completions", {"prompt": [1, 2, 3]}, "prompt"),
    ("/v1/completions", {"prompt": ""}, "non-empty prompt"),
    ("/v1/completions", {"prompt": ["a"] * 5, "n": 2}, "serve.max_n"),
    ("/v1/completions", {"prompt": "word " * 900}, "context"),
    ("/v1/completions", {"prompt": "hi", "model": "missing"}, "unknown adapter"),
])
def test_openai_routes_refuse_what_they_cannot_do(app, route, body, fragment) -> None:
    r = post(route, body)
    assert 400 <= r.status_code < 500 and fragment in r.json()["error"]["message"], r.text


@pytest.mark.parametrize(
    "body, status, fragment",
    [
        ("{not json", 400, "not valid JSON"),
        ({"persona": {"age": 3}}, 400, "exactly one of"),
        ({"stimulus": STIMULUS, "n": "many"}, 400, "n"),
        ({"stimulus": STIMULUS, "unexpected": 1}, 400, "unexpected"),
        ({"stimulus": STIMULUS, "adapter": "missing"}, 404, "unknown adapter"),
        ({"stimulus": STIMULUS, "adapter": "../a1"}, 400, "not allowed"),
        ({"stimulus": STIMULUS, "adapter": "a1/../../etc"}, 400, "not allowed"),
        ({"stimulus": "word " * 900 + STIMULUS}, 400, "context"),
        ({"stimulus": STIMULUS, "mode": "sample", "n": 9}, 400, "serve.max_n"),
        ({"stimulus": STIMULUS, "mode": "sample", "max_tokens": 17}, 400, "max_tokens"),
        ({"stimulus": "How much would you pay? Only return an integer representing dollars."}, 400, "no bounded answer scale"),
        ({"stimulus": "x" * 30000}, 413, "over the limit"),
        # issue 14's probe: these gave 500 or FastAPI's {"detail": ...} instead of the documented body
        ({"stimulus": STIMULUS, "adapter": ""}, 400, "not allowed"),
        (b'{"stimulus": "\xff\xfe broken utf-8"}', 400, ""),
        ('{"stimulus": "x", "n": ' + "9" * 5000 + "}", 400, ""),
        ({"stimulus": "Only return an integer from 1 to 100000000, nothing else."}, 400, "no bounded answer scale"),
        ({"stimulus": "Please return 1 for yes " * 500}, 400, "no bounded answer scale"),
        ({"stimulus": STIMULUS, "mode": "sample", "temperature": 1e-300, "max_tokens": 2}, 200, None),
        # issue 42's probes: persona fields misspelled or of the wrong type, text that is not text, huge options
        ({"persona": {"Age": 40}, "stimulus": STIMULUS}, 400, "did you mean 'age'"),
        ({"persona": {"Party": "Democrat"}, "stimulus": STIMULUS}, 400, "did you mean 'party_id'"),
        ({"persona": {"age": "abc"}, "stimulus": STIMULUS}, 400, "integer from 0 to 150"),
        ({"persona": {"age": 1e20}, "stimulus": STIMULUS}, 400, "integer from 0 to 150"),
        ({"persona": {"party_id": {"nested": 1}}, "stimulus": STIMULUS}, 400, "text or a number"),
        ('{"stimulus": "\\ud800 ' + STIMULUS + '"}', 400, "lone UTF-16 surrogate"),
        ('{"persona": {"gender": "\\udfff"}, "stimulus": "' + STIMULUS + '"}', 400, "persona.gender holds a lone"),
        ({"stimulus": STIMULUS, "options": [1, 10**15]}, 400, "options"),
        ({"persona": {"age": "40", "household_size": 3.0}, "stimulus": STIMULUS}, 200, None),
    ],
)
def test_bad_input_is_a_clear_4xx_and_the_replica_keeps_serving(app, body, status, fragment) -> None:
    r = post("/v1/predict", body)
    assert r.status_code == status, r.text
    if fragment is not None:
        assert fragment in r.json()["error"]["message"]
    assert post("/v1/predict", {"stimulus": STIMULUS}).status_code == 200


def test_a_chunked_body_over_the_limit_is_a_413_not_read_whole(app) -> None:
    # no Content-Length: the limit (serve.max_body_bytes=20000) is counted as the bytes arrive
    def chunks():
        yield b'{"stimulus": "'
        for _ in range(60):
            yield b"x" * 1000
        yield b'"}'

    r = requests.post(URL + "/v1/predict", data=chunks(), headers={**AUTH, "Content-Type": "application/json"}, timeout=60)
    assert "content-length" not in {k.lower() for k in r.request.headers} and r.request.headers["Transfer-Encoding"] == "chunked"
    assert r.status_code == 413 and "over the limit of 20000 bytes" in r.json()["error"]["message"]
    small = requests.post(URL + "/v1/predict", data=iter([b'{"stimulus": ', f'"{STIMULUS}"'.encode(), b"}"]),
                          headers={**AUTH, "Content-Type": "application/json"}, timeout=60)
    assert small.status_code == 200, small.text  # a chunked body under the limit is read as usual


def test_chat_rejects_too_many_tokens_and_missing_messages(app) -> None:
    assert post("/v1/chat/completions", {"model": "base", "messages": []}).status_code == 400
    empty_model = post("/v1/chat/completions", {"model": "", "messages": [{"role": "user", "content": "hi"}]})
    assert empty_model.status_code == 400 and "not allowed" in empty_model.json()["error"]["message"]
    assert post("/v1/chat/completions", {"model": "base", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 999}).status_code == 400


def test_bearer_token_is_required(app) -> None:
    r = requests.post(URL + "/v1/predict", json={"stimulus": STIMULUS}, timeout=30)
    assert r.status_code == 401
    r = requests.post(URL + "/v1/predict", json={"stimulus": STIMULUS}, headers={"Authorization": "Bearer wrong"}, timeout=30)
    assert r.status_code == 401
    for header in (b"Bearer \xe9t\xe9", "Bearer été".encode(), b"\xff\xfe", b"Bearer " + TOKEN.encode() + b"\x80"):
        for method, route in (("post", "/v1/predict"), ("post", "/v1/chat/completions"), ("get", "/v1/models")):
            r = requests.request(method, URL + route, json={"stimulus": STIMULUS}, headers={"Authorization": header}, timeout=30)
            assert r.status_code == 401, (header, route, r.text)


def test_random_bodies_and_headers_on_every_route_are_never_a_5xx(app) -> None:
    """A seeded fuzz: random JSON shapes, random bytes, known fields with random values, odd
    headers, on every route; no answer is a 5xx and the replica never restarts."""
    import random

    rng = random.Random(42)
    pid = requests.get(URL + "/healthz", timeout=30).json()["replica_pid"]

    def text() -> str:
        pieces = ["a", "é", "中", "\U0001f600", "\x00", "\n", "\\", '"', "\ud800", "{", "-1", "1e999", "Party Id"]
        return "".join(rng.choice(pieces) for _ in range(rng.randint(0, 12)))

    def value(depth: int = 0):
        kinds = [lambda: None, lambda: True, lambda: rng.randint(-10**30, 10**30), lambda: rng.uniform(-1e300, 1e300), text,
                 lambda: rng.choice([0, -1, 1.5]), lambda: [value(depth + 1) for _ in range(rng.randint(0, 4))],
                 lambda: {text(): value(depth + 1) for _ in range(rng.randint(0, 4))},
                 lambda: {k: value(depth + 1) for k in rng.sample(["age", "party_id", "gender", "x"], 2)}]
        return kinds[rng.randint(0, 8 if depth < 3 else 5)]()

    fields = {"/v1/predict": ["persona", "stimulus", "prompt", "adapter", "mode", "options", "n", "temperature", "top_p", "max_tokens"],
              "/v1/chat/completions": ["model", "messages", "temperature", "top_p", "max_tokens", "n", "logprobs", "top_logprobs",
                                       "stream", "stream_options"],
              "/v1/completions": ["model", "prompt", "max_tokens", "n", "logprobs", "stream", "echo", "temperature"],
              "/v1/predict/batch": ["rows", "adapter", "temperature", "top_p"]}
    statuses = []
    for i in range(160):
        route = rng.choice(["/v1/predict", "/v1/predict/batch", "/v1/chat/completions", "/v1/completions", "/v1/models", "/healthz"])
        shape = i % 4
        if shape == 0:
            data = json.dumps(value(), ensure_ascii=rng.random() < 0.5).encode("utf-8", "surrogatepass")
        elif shape == 1:
            data = bytes(rng.randrange(256) for _ in range(rng.randint(0, 300)))
        else:
            names = fields.get(route, ["x", "stimulus", "model"])
            body = {k: value() for k in rng.sample(names, rng.randint(1, min(4, len(names))))}
            if shape == 3 and route == "/v1/predict":
                body = {"stimulus": STIMULUS, "max_tokens": 2, **body}
            data = json.dumps(body).encode()
        headers = {**AUTH, "Content-Type": rng.choice(["application/json", "text/plain", "application/x-www-form-urlencoded"])}
        if rng.random() < 0.1:
            headers["Authorization"] = bytes(rng.choice([*range(0x21, 0x7f), *range(0x80, 0x100)]) for _ in range(12))  # no CR/LF
        method = "get" if route in ("/v1/models", "/healthz") and rng.random() < 0.7 else "post"
        r = requests.request(method, URL + route, data=data, headers=headers, timeout=120)
        statuses.append(r.status_code)
        assert r.status_code < 500, (route, data[:200], r.status_code, r.text[:300])
    assert requests.get(URL + "/healthz", timeout=30).json()["replica_pid"] == pid
    assert len(set(statuses)) > 2  # the fuzz reached more than one kind of answer


def test_concurrent_requests_are_batched(app) -> None:
    from concurrent.futures import ThreadPoolExecutor

    before = requests.get(URL + "/healthz", timeout=30).json()
    with ThreadPoolExecutor(16) as pool:
        codes = list(pool.map(lambda i: post("/v1/predict", {"persona": {"age": 20 + i}, "stimulus": STIMULUS}).status_code, range(32)))
    after = requests.get(URL + "/healthz", timeout=30).json()
    assert codes == [200] * 32
    requests_done = after["batched_requests"] - before["batched_requests"]
    batches = after["batches"] - before["batches"]
    if after["engine"] == "transformers":
        assert requests_done == 32 and batches < 32  # some requests shared a forward pass
    else:
        # vLLM: batches are engine steps, shared by every request in flight (continuous batching).
        # One 7-point request alone is 8 engine requests over 2 steps (the prompt, then its 7 options).
        assert requests_done / batches > 8, f"{requests_done / batches:.1f} engine requests a step: requests did not share steps"
    # What bench/serve.py reads: where and on which engine the model runs, how long it was busy.
    assert after["device"] == "cpu" and after["model_seconds"] > before["model_seconds"] >= 0
    assert after["engine"] in ("transformers", "vllm")


def test_a_screening_through_the_endpoint_scores_what_the_app_answers(app, adapters, tiny_model, tiny_shape, tmp_path) -> None:
    """`screen` with simulate.backend=http: the Serve app scores the rows, adapters by the names it
    knows them by; the predictions are the app's own /v1/predict answers for the same prompts."""
    import pyarrow.parquet as pq
    import yaml

    from socrates_ray.cli import main

    spec = {"name": "served", "population": {"source": "marginals", "n_per_arm": 6, "marginals": {"age": {"30": 1, "70": 1}}},
            "conditions": [{"name": "plain", "stimulus": "A plan."}, {"name": "costly", "stimulus": "A plan that costs a lot."}],
            "outcomes": [{"name": "fair", "question": STIMULUS}], "models": ["base", "a1"],
            "adapters": {"a1": str(adapters / "a1")}, "analysis": {"bootstrap": 100}}
    (tmp_path / "served.yaml").write_text(yaml.safe_dump(spec))
    assert main(["screen", "--experiment", str(tmp_path / "served.yaml"), f"model.path={tiny_model}", *tiny_shape, f"run.output_dir={tmp_path}",
                 "simulate.backend=http", f"simulate.endpoint={URL}", "simulate.temperature=1.0",
                 "serve.auth_token_env=SOCRATES_TEST_TOKEN"]) == 0
    folder = tmp_path / "demo" / "screen" / "served"
    assert json.loads((folder / "screen.json").read_text())["models"]["a1"]["outcomes"]["fair"]["contrasts"]
    for model in ("base", "a1"):
        row = pq.read_table(folder / "simulate" / model / "predictions.parquet").slice(0, 1).to_pylist()[0]
        persona = {k: v for k, v in row["demographic"].items() if v is not None}
        r = post("/v1/predict", {"persona": persona, "stimulus": "A plan.\n\n" + STIMULUS, "adapter": model, "temperature": 1.0})
        assert r.status_code == 200, r.text
        assert max(abs(a - b) for a, b in zip(r.json()["probs"], row["probs"])) < 1e-4, (model, r.json()["probs"], row["probs"])
