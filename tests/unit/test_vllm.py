"""vLLM as the inference engine (vllm_scorer.py): the same distributions as the transformers
TransformersEngine, the paper's sampling protocol, adapters by name, merged or as LoRA, on CPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from socrates_ray.config import DEFAULT_SYSTEM_PROMPT
from socrates_ray.infer import EngineSpec, ScoreError, TransformersEngine, VllmSettings, distributions, load_engine, sample_answers
from socrates_ray.infer.vllm_engine import VllmEngine, merged_cache, merged_copy, needs_merge

STIMULUS = "How fair is this proposal? Only return an integer from 1 to {hi}, where 1 means Not at all and {hi} means Very, nothing else."
PROMPTS = ["- Age: 30\n- Party: Democrat\n" + STIMULUS.format(hi=11), "- Age: 71\n- Party: Republican\n" + STIMULUS.format(hi=5),
           "- Age: 45\n" + STIMULUS.format(hi=7)]
OPTIONS = [list(range(1, 12)), list(range(1, 6)), list(range(1, 8))]
TOLERANCE = 1e-4  # largest difference in any option probability, fp32 (measured: ~1e-6)


def random_adapter(base: Path, folder: Path, targets: list[str], rank: int, seed: int) -> Path:
    """A PEFT LoRA adapter with random (non-zero) B matrices, so it changes the distributions."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=targets))
    for name, p in model.named_parameters():
        if "lora_B" in name or "lora_embedding_B" in name:
            p.data.normal_(0, 0.05)
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def adapters(tiny_model, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("vllm_adapters")
    return {
        "attention": random_adapter(tiny_model, root / "attention", ["q_proj", "k_proj", "v_proj", "o_proj"], 8, 1),
        "retrained": random_adapter(tiny_model, root / "retrained", ["q_proj", "k_proj", "v_proj", "o_proj"], 8, 2),
        # the demo recipe's layout: LoRA on the embeddings and the output layer too (vLLM serves it merged)
        "embeddings": random_adapter(tiny_model, root / "embeddings", ["q_proj", "v_proj", "embed_tokens", "lm_head"], 8, 3),
    }


@pytest.fixture(scope="module")
def reference(tiny_model, adapters) -> TransformersEngine:
    scorer = TransformersEngine(str(tiny_model), DEFAULT_SYSTEM_PROMPT)
    for name, path in adapters.items():
        scorer.load_adapter(name, path)
    return scorer


@pytest.fixture(scope="module")
def engine(tiny_model, tmp_path_factory) -> VllmEngine:
    """One engine for the module (what a replica holds): in-process vLLM engines share global state,
    so a process keeps one scorer. Adapters by name over the base where vLLM can apply them."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SOCRATES_VLLM_CACHE", str(tmp_path_factory.mktemp("merged")))
        scorer = load_engine(EngineSpec("vllm", VllmSettings(adapters="lora", max_lora_rank=8, max_num_seqs=64)),
                             str(tiny_model), DEFAULT_SYSTEM_PROMPT)
        assert isinstance(scorer, VllmEngine)
        yield scorer


def max_difference(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    return max(float(np.abs(x - y).max()) for x, y in zip(a, b))


def test_vllm_distributions_equal_the_transformers_scorer_for_the_base_and_an_adapter_by_name(engine, reference, adapters) -> None:
    engine.load_adapter("attention", adapters["attention"])
    for adapter in (None, "attention"):
        expected = distributions(reference, PROMPTS, OPTIONS, adapter)
        got = distributions(engine, PROMPTS, OPTIONS, adapter)
        assert max_difference(got, expected) < TOLERANCE, adapter
        for d, opts in zip(got, OPTIONS):
            assert d.shape == (len(opts),) and np.isclose(d.sum(), 1.0)
    # the adapter really changes the answer (the equality above is not two copies of the base)
    base, tuned = (distributions(engine, PROMPTS, OPTIONS, a) for a in (None, "attention"))
    assert max_difference(base, tuned) > 50 * TOLERANCE
    # temperature and top_p are applied to the same log-probabilities as the reference's
    assert max_difference(distributions(engine, PROMPTS, OPTIONS, "attention", 2.0, 0.8),
                          distributions(reference, PROMPTS, OPTIONS, "attention", 2.0, 0.8)) < TOLERANCE


def test_an_adapter_reloaded_under_its_name_answers_with_its_new_weights(engine, reference, adapters) -> None:
    """The prefix cache is keyed by the adapter's id: a retrained adapter under the same name must
    not be answered from the old one's cached prompt."""
    engine.load_adapter("v", adapters["attention"])
    before = distributions(engine, PROMPTS, OPTIONS, "v")
    engine.unload_adapter("v")
    with pytest.raises(ScoreError, match="unknown adapter"):
        distributions(engine, PROMPTS, OPTIONS, "v")
    engine.load_adapter("v", adapters["retrained"])
    after = distributions(engine, PROMPTS, OPTIONS, "v")
    assert max_difference(after, distributions(reference, PROMPTS, OPTIONS, "retrained")) < TOLERANCE
    assert max_difference(before, after) > 50 * TOLERANCE


def test_an_adapter_on_the_embeddings_and_output_layer_is_served_merged_with_the_same_distributions(engine, reference, adapters) -> None:
    assert needs_merge(adapters["embeddings"]) == ["embed_tokens", "lm_head"]
    assert needs_merge(adapters["attention"]) == []
    engine.load_adapter("embeddings", adapters["embeddings"])
    assert "embeddings" in engine._merged and len(list(merged_cache().glob("*/config.json"))) == 1
    got = distributions(engine, PROMPTS, OPTIONS, "embeddings")
    assert max_difference(got, distributions(reference, PROMPTS, OPTIONS, "embeddings")) < TOLERANCE
    assert max_difference(got, distributions(reference, PROMPTS, OPTIONS, None)) > 50 * TOLERANCE
    engine.unload_adapter("embeddings")
    assert "embeddings" not in engine.adapters
    # the base engine still answers after a merged engine was let go (in-process engines share state)
    assert max_difference(distributions(engine, PROMPTS, OPTIONS), distributions(reference, PROMPTS, OPTIONS)) < TOLERANCE
    engine.load_adapter("embeddings", adapters["embeddings"])  # taken back from the parked engines
    assert max_difference(distributions(engine, PROMPTS, OPTIONS, "embeddings"), got) < TOLERANCE


def test_an_adapter_over_the_rank_limit_is_refused_with_the_setting_to_change(engine, tiny_model, tmp_path) -> None:
    wide = random_adapter(tiny_model, tmp_path / "wide", ["q_proj"], 16, 4)
    with pytest.raises(ScoreError, match="rank 16, over model.vllm.max_lora_rank 8"):
        engine.load_adapter("wide", wide)
    assert "wide" not in engine.adapters


def test_sample_mode_follows_the_paper_protocol_seeded(engine, reference, adapters) -> None:
    engine.load_adapter("attention", adapters["attention"])
    prompts = PROMPTS * 4
    answers = sample_answers(engine, prompts, n=3, adapter="attention")
    assert len(answers) == len(prompts) and all(len(a) == 3 for a in answers)
    assert all(a is None or isinstance(a, int) for row in answers for a in row)  # unparsable answers are None, counted
    assert sample_answers(engine, prompts, n=3, adapter="attention") == answers  # seeded by (seed, prompt)
    out = engine.generate([engine.encoder.prefix_text(PROMPTS[0])], n=2, max_new_tokens=5, logprobs=True)[0]
    assert len(out) == 2
    for item in out:
        assert item["finish_reason"] in ("stop", "length") and item["tokens"] <= 5
        assert len(item["logprobs"]) == item["tokens"] and all(lp["logprob"] <= 0 for lp in item["logprobs"])
    # greedy decoding equals the transformers reference token for token
    prefix = engine.encoder.prefix_text(PROMPTS[1])
    assert engine.generate([prefix], 1, 0.0, 1.0, 6)[0][0]["text"] == reference.generate([prefix], 1, 0.0, 1.0, 6)[0][0]["text"]


def test_callers_in_many_threads_share_engine_steps_and_each_gets_its_own_answers(engine, reference, adapters) -> None:
    """Continuous batching (vllm_loop.EngineLoop): requests from concurrent callers join the same
    engine steps; every caller gets exactly its own outputs, equal to what it gets alone."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    engine.load_adapter("attention", adapters["attention"])
    prefixes = [engine.encoder.prefix_text(p) for p in PROMPTS] * 3
    alone = [engine.generate([p], 1, 0.0, 1.0, 12, "attention" if i % 2 else None)[0][0]["text"] for i, p in enumerate(prefixes)]
    dists_alone = [distributions(engine, [PROMPTS[i % 3]], [OPTIONS[i % 3]], "attention")[0] for i in range(6)]
    steps, shared = engine.loop.steps, engine.loop.step_requests
    start = threading.Barrier(len(prefixes) + 6)

    def generate(i: int) -> str:
        start.wait()
        return engine.generate([prefixes[i]], 1, 0.0, 1.0, 12, "attention" if i % 2 else None)[0][0]["text"]

    def distribution(i: int) -> np.ndarray:
        start.wait()
        return distributions(engine, [PROMPTS[i % 3]], [OPTIONS[i % 3]], "attention")[0]

    with ThreadPoolExecutor(len(prefixes) + 6) as pool:
        texts = pool.map(generate, range(len(prefixes)))
        dists = pool.map(distribution, range(6))
        texts, dists = list(texts), list(dists)
    assert texts == alone  # greedy: token for token, whatever shared the steps
    assert max_difference(dists, dists_alone) < TOLERANCE
    per_step = (engine.loop.step_requests - shared) / (engine.loop.steps - steps)
    assert per_step > 2, f"{per_step:.2f} requests per engine step: callers did not share steps"
    # one caller's bad request fails that caller only
    with ThreadPoolExecutor(2) as pool:
        bad = pool.submit(engine.option_logprobs, ["word " * 5000], [[1, 2]])
        good = pool.submit(distributions, engine, PROMPTS, OPTIONS)
        with pytest.raises(ScoreError, match="context"):
            bad.result()
        assert max_difference(good.result(), distributions(reference, PROMPTS, OPTIONS)) < TOLERANCE
    # ... also where vLLM itself refuses it inside the loop (a token id outside the vocabulary)
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    with pytest.raises(Exception, match="out of vocabulary|vocab"):
        engine.loop.run(engine._base, [TokensPrompt(prompt_token_ids=[1, 10**7])], [SamplingParams(max_tokens=1)])
    assert max_difference(distributions(engine, PROMPTS, OPTIONS), distributions(reference, PROMPTS, OPTIONS)) < TOLERANCE


def test_a_caller_that_gives_up_leaves_the_engine_at_once_and_the_others_go_on(engine, reference) -> None:
    """What a Serve replica does when its client disconnects: the request's cancel event is set, its
    requests are aborted mid-generation (no more steps spent on them), the caller gets Cancelled."""
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    from socrates_ray.infer.vllm_loop import Cancelled

    loop, event = engine.loop, threading.Event()
    prompt = TokensPrompt(prompt_token_ids=engine.encoder.encode_prompts(PROMPTS[:1])[0])
    long = SamplingParams(max_tokens=1500, ignore_eos=True, temperature=1.0, seed=1)  # 1,500 steps if nobody stops it

    def abandoned() -> None:
        with loop.cancelled_by(event):
            loop.run(engine._base, [prompt], [long])

    steps, cancelled = loop.steps, loop.cancelled
    with ThreadPoolExecutor(2) as pool:
        gone = pool.submit(abandoned)
        while loop.steps < steps + 5:  # it is decoding
            time.sleep(0.01)
        event.set()
        other = pool.submit(distributions, engine, PROMPTS, OPTIONS)
        with pytest.raises(Cancelled):
            gone.result()
        assert max_difference(other.result(), distributions(reference, PROMPTS, OPTIONS)) < TOLERANCE
    assert loop.cancelled == cancelled + 1 and not loop._waiting  # aborted, nothing left in the engine
    assert loop.steps - steps < 1500, "the abandoned request was decoded to its end"


def test_exact_scoring_refuses_prompts_over_the_context(engine) -> None:
    with pytest.raises(ScoreError, match="context"):
        engine.option_logprobs(["word " * 5000], [[1, 2]])


def test_replicas_merging_the_same_adapter_at_once_all_get_the_one_copy(tiny_model, adapters, tmp_path, monkeypatch) -> None:
    """Two simulate replicas start together and merge the demo's adapter at the same moment."""
    import multiprocessing

    monkeypatch.setenv("SOCRATES_VLLM_CACHE", str(tmp_path / "merged"))
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        outs = pool.starmap(merged_copy, [(str(tiny_model), str(adapters["embeddings"]))] * 2)
    assert outs[0] == outs[1] and (outs[0] / "config.json").is_file()
    assert [p.name for p in (tmp_path / "merged").iterdir()] == [outs[0].name]  # no half-written copy left
