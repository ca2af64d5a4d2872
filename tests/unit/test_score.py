"""Exact answer distributions and sampling (score.py) on the offline tiny model."""

from __future__ import annotations

import numpy as np
import pytest

from socrates_ray.config import DEFAULT_SYSTEM_PROMPT
from socrates_ray.infer import ScoreError, TransformersEngine, distributions, parse_first_integer, sample_answers, shape_distribution
from socrates_ray.infer.transformers_engine import option_layout

STIMULUS = "How fair is this proposal? Only return an integer from 1 to {hi}, where 1 means Not at all and {hi} means Very, nothing else."


def test_parse_first_integer() -> None:
    assert parse_first_integer("I'd say 5.") == 5
    assert parse_first_integer("-3 or 4") == -3
    assert parse_first_integer("about 1,000 dollars") == 1000
    assert parse_first_integer("no idea") is None


def test_shape_distribution_temperature_and_top_p() -> None:
    lp = np.log(np.array([0.5, 0.3, 0.15, 0.05]))
    assert np.allclose(shape_distribution(lp), [0.5, 0.3, 0.15, 0.05])
    sharp = shape_distribution(lp, temperature=0.5)
    assert sharp[0] > 0.5 and np.isclose(sharp.sum(), 1)
    cut = shape_distribution(lp, top_p=0.8)  # 0.5 + 0.3 reaches 0.8: the last two go
    assert np.allclose(cut, [0.5 / 0.8, 0.3 / 0.8, 0, 0])
    assert np.allclose(shape_distribution(lp, temperature=0), [1, 0, 0, 0])
    assert np.allclose(shape_distribution(lp, temperature=1e-300), [1, 0, 0, 0])  # greedy, not NaN from overflow


def test_option_layout_scores_each_option_after_the_prompt() -> None:
    layout = option_layout([10, 11, 12], [[1], [1, 0]], eot=99)
    assert layout["input_ids"] == [10, 11, 12, 1, 1, 0]
    assert layout["position_ids"] == [0, 1, 2, 3, 3, 4]
    # option "1": P(1 | prompt) read at the last prompt token, then P(eot | 1)
    assert layout["targets"][0] == [(2, 1), (3, 99)]
    # option "10" shares the prompt position but not option "1"'s token
    assert layout["targets"][1] == [(2, 1), (4, 0), (5, 99)]


@pytest.fixture(scope="module")
def scorer(tiny_model) -> TransformersEngine:
    return TransformersEngine(str(tiny_model), DEFAULT_SYSTEM_PROMPT)


def brute_force(scorer: TransformersEngine, prompt: str, option: int) -> float:
    """log P(option + eot | prompt) from one plain forward pass over prompt + answer."""
    import torch

    ids, labels = scorer.encoder.encode([prompt], [str(option)])[0]
    with torch.no_grad():
        logp = torch.log_softmax(scorer.model(input_ids=torch.tensor([ids])).logits[0].float(), -1)
    return sum(float(logp[j - 1, ids[j]]) for j in range(len(ids)) if labels[j] != -100)


def test_exact_distribution_matches_brute_force_including_multi_token_answers(scorer: TransformersEngine) -> None:
    prompts = ["- Age: 30\n" + STIMULUS.format(hi=11), "- Age: 71\n" + STIMULUS.format(hi=5)]
    options = [list(range(1, 12)), list(range(1, 6))]
    logprobs = scorer.option_logprobs(prompts, options)
    for prompt, opts, lp in zip(prompts, options, logprobs):
        expected = [brute_force(scorer, prompt, o) for o in opts]
        assert np.allclose(lp, expected, atol=1e-4), (lp, expected)
    dists = distributions(scorer, prompts, options)
    for d, opts in zip(dists, options):
        assert d.shape == (len(opts),) and np.isclose(d.sum(), 1.0) and (d > 0).all()


def test_options_on_cached_prompts_equal_the_tree_mask(tiny_model, scorer: TransformersEngine) -> None:
    """tree="cache" (prompts causal with no mask, options on copies of their prompt's cache) gives the tree
    mask's log-probabilities: prompts of different lengths in one pass, 11-point scales with two-token
    answers beside 2-point ones (with an adapter: the test below)."""
    prompts = ["- Age: 30\n" + STIMULUS.format(hi=11), "- Age: 71\n- Party: Independent\n" + STIMULUS.format(hi=2),
               "- Age: 52\n" + STIMULUS.format(hi=5)]
    options = [list(range(1, 12)), [1, 2], list(range(1, 6))]
    cached = TransformersEngine(str(tiny_model), DEFAULT_SYSTEM_PROMPT, tree="cache")
    mask, cache = scorer.option_logprobs(prompts, options), cached.option_logprobs(prompts, options)
    assert all(np.allclose(a, b, atol=1e-5) for a, b in zip(mask, cache)), (mask, cache)
    assert np.allclose(cache[1], [brute_force(scorer, prompts[1], o) for o in (1, 2)], atol=1e-4)
    # one prompt a pass (the longest-first chunking) and every prompt at once agree too
    cached.max_tokens_per_pass = 1
    assert all(np.allclose(a, b, atol=1e-5) for a, b in zip(mask, cached.option_logprobs(prompts, options)))


def test_a_vanishing_temperature_generates_greedily_instead_of_failing(scorer: TransformersEngine) -> None:
    prefix = scorer.encoder.prefix_text("- Age: 30\n" + STIMULUS.format(hi=5))
    tiny, zero = (scorer.generate([prefix], 1, t, 1.0, 4)[0][0]["text"] for t in (1e-300, 0.0))
    assert tiny == zero


def test_a_prompts_samples_follow_the_prompt_not_the_batch(scorer: TransformersEngine) -> None:
    """Each row draws from a generator seeded by its own prefix and sample index: the same prompt gets
    the same samples alone or in a batch of others (the demo's open-ended cells moved from run to run
    when transformers drew from torch's global generator), and its n samples are not all one draw."""
    import torch

    prefixes = [scorer.encoder.prefix_text(f"- Age: {age}\n" + STIMULUS.format(hi=100)) for age in (21, 35, 50, 64)]
    texts = lambda outs: [[o["text"] for o in row] for row in outs]  # noqa: E731
    alone = texts(scorer.generate(prefixes[2:3], 6, 1.0, 1.0, 6))
    torch.manual_seed(123)  # the global generator no longer decides anything
    batched = texts(scorer.generate(prefixes[::-1], 6, 1.0, 1.0, 6))
    assert batched[1] == alone[0]
    assert len(set(alone[0])) > 1
    with_logprobs = scorer.generate(prefixes[2:3], 6, 1.0, 1.0, 6, logprobs=True)[0]
    assert [o["text"] for o in with_logprobs] == alone[0]
    assert all(np.isfinite(t["logprob"]) and t["logprob"] <= 0 for o in with_logprobs for t in o["logprobs"])
    # top_p keeps the smallest set holding top_p of the mass: a tiny top_p leaves the most likely token
    greedy = scorer.generate(prefixes[:1], 1, 0.0, 1.0, 6)[0][0]["text"]
    assert {o["text"] for o in scorer.generate(prefixes[:1], 4, 1.0, 1e-6, 6)[0]} == {greedy}


def test_exact_scoring_refuses_prompts_over_the_context(scorer: TransformersEngine) -> None:
    with pytest.raises(ScoreError, match="context"):
        scorer.option_logprobs(["word " * 5000], [[1, 2]])


def test_sampled_answers_agree_with_the_exact_distribution(tiny_model) -> None:
    """Teach the tiny model one prompt's answer distribution (70% '1', 30% '2'), then check that
    paper-style sampling (temperature 1, top_p 1) draws answers at the exact distribution's rates."""
    import torch

    scorer = TransformersEngine(str(tiny_model), DEFAULT_SYSTEM_PROMPT)
    prompt = "- Age: 44\n" + STIMULUS.format(hi=2)
    examples = scorer.encoder.encode([prompt] * 10, ["1"] * 7 + ["2"] * 3)
    ids = torch.tensor([e[0] for e in examples])
    labels = torch.tensor([e[1] for e in examples])
    torch.manual_seed(0)
    opt = torch.optim.Adam(scorer.model.parameters(), lr=3e-3)
    scorer.model.train()
    for _ in range(60):
        opt.zero_grad()
        scorer.model(input_ids=ids, labels=labels).loss.backward()
        opt.step()
    scorer.model.eval()
    exact = distributions(scorer, [prompt], [[1, 2]])[0]
    assert abs(exact[0] - 0.7) < 0.15  # it learned roughly the taught distribution
    torch.manual_seed(1)
    draws = sample_answers(scorer, [prompt], n=400, temperature=1.0, top_p=1.0, max_new_tokens=3)[0]
    assert sum(d is None for d in draws) < 40  # nearly every sample parses
    counts = np.array([sum(d == 1 for d in draws), sum(d == 2 for d in draws)])
    share = counts[0] / counts.sum()
    # Binomial standard error at n=400 is about 0.023: 4 standard errors of tolerance.
    assert abs(share - exact[0]) < 0.1, (share, exact)


def test_exact_scoring_with_an_adapter_on_the_output_layer_matches_brute_force(tiny_model, tmp_path) -> None:
    """Scoring projects only the option positions through the output layer: with an adapter that
    changes that layer too, the result must still equal a plain forward pass of the adapted model,
    and differ from the base model's."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model))
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "down_proj", "lm_head"], init_lora_weights=False)
    get_peft_model(base, config).save_pretrained(tmp_path / "adapter")
    scorer = TransformersEngine(str(tiny_model), DEFAULT_SYSTEM_PROMPT)
    scorer.load_adapter("a", tmp_path / "adapter")
    prompts = ["- Age: 44\n" + STIMULUS.format(hi=11)]
    options = [list(range(1, 12))]
    adapted = scorer.option_logprobs(prompts, options, adapter="a")[0]
    scorer.model.set_adapter("a")
    assert np.allclose(adapted, [brute_force(scorer, prompts[0], o) for o in options[0]], atol=1e-4)
    base_lp = scorer.option_logprobs(prompts, options)[0]
    with scorer.model.disable_adapter():
        assert np.allclose(base_lp, [brute_force(scorer, prompts[0], o) for o in options[0]], atol=1e-4)
    assert not np.allclose(adapted, base_lp, atol=1e-3)
    scorer.tree = "cache"  # the options on cached prompts, through the same adapter layers
    assert np.allclose(scorer.option_logprobs(prompts, options, adapter="a")[0], adapted, atol=1e-5)
    assert np.allclose(scorer.option_logprobs(prompts, options)[0], base_lp, atol=1e-5)
    # a name torch cannot use as a module name (an adapter folder called v1.2) loads, answers and unloads
    scorer.load_adapter("v1.2", tmp_path / "adapter")
    assert np.allclose(scorer.option_logprobs(prompts, options, adapter="v1.2")[0], adapted, atol=1e-5)
    scorer.unload_adapter("v1.2")
    assert "v1.2" not in scorer.adapters


def test_bf16_scoring_runs_the_adapter_in_bf16_and_agrees_with_fp32(tiny_model, tmp_path) -> None:
    """precision=bf16 (what `auto` picks on GPUs and on CPUs with native bf16): base and adapter both
    compute in bf16 (peft would otherwise upcast the adapter and cast every LoRA layer back and forth),
    and the option distributions stay within a few thousandths of fp32's."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model))
    config = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)
    get_peft_model(base, config).save_pretrained(tmp_path / "adapter")
    prompts = ["- Age: 44\n" + STIMULUS.format(hi=7), "- Age: 23\n" + STIMULUS.format(hi=11)]
    options = [list(range(1, 8)), list(range(1, 12))]
    found = {}
    for precision in ("fp32", "bf16"):
        scorer = TransformersEngine(str(tiny_model), DEFAULT_SYSTEM_PROMPT, precision=precision)
        scorer.load_adapter("a", tmp_path / "adapter")
        assert {p.dtype for p in scorer.model.parameters()} == {torch.float32 if precision == "fp32" else torch.bfloat16}
        found[precision] = distributions(scorer, prompts, options, adapter="a")
    for p32, p16 in zip(found["fp32"], found["bf16"]):
        assert np.abs(p32 - p16).max() < 0.02


def test_auto_precision_is_bf16_on_gpus_and_native_bf16_cpus_only(monkeypatch) -> None:
    import torch

    from socrates_ray.infer.precision import resolve_precision

    assert resolve_precision("fp32", on_gpu=True) == "fp32" and resolve_precision("bf16", on_gpu=False) == "bf16"
    assert resolve_precision("auto", on_gpu=True) == "bf16"
    for amx, avx512_bf16, expected in ((True, False, "bf16"), (False, True, "bf16"), (False, False, "fp32")):
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
        assert resolve_precision("auto", on_gpu=False) == expected
