"""The transformers inference engine (model.engine: transformers), the reference for every other.

Exact mode: for a bounded scale A..B every answer string ("1", "10", "100") is scored as a whole
continuation *including the end-of-turn token*, so "1" and "10" are told apart. All options of a
prompt go through ONE forward pass: the prompt is laid out once and every option is appended
after it with a tree-shaped attention mask (each option sees the prompt and its own earlier
tokens, never the other options), so the prompt's prefill is computed once and reused by every
option. Several prompts are batched side by side.

Sampling mode: the paper's protocol (temperature 0.6, top_p 0.9, up to 32 new tokens, parse the
first integer, count unparsable answers), drawn per prompt (sampling.SeededSampler).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from socrates_ray.data.tokenize import Encoder, additive_mask
from socrates_ray.infer.engine import (
    GREEDY_BELOW, PAPER_MAX_NEW_TOKENS, PAPER_TEMPERATURE, PAPER_TOP_P, ContextOverflow, OptionIds, ScoreError, completion,
    encode_prefixes, top_count, unknown_adapter,
)
from socrates_ray.infer.adapter_check import AdapterUnusable, check_adapter
from socrates_ray.infer.precision import engine_precision
from socrates_ray.infer.sampling import SeededSampler
from socrates_ray.models import load_tokenizer

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


def _module_name(name: str) -> str:
    """The name peft registers an adapter's modules under: torch module names cannot hold a "." (an
    adapter folder named v1.2 would fail to load), so every character outside [A-Za-z0-9_] is encoded."""
    return "".join(c if c.isascii() and (c.isalnum() or c == "_") else f"_x{ord(c):x}_" for c in name)


@dataclass
class TransformersEngine:
    """A base model plus any number of LoRA adapters, scored one adapter at a time (engine.InferenceEngine).

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
            raise ScoreError(f"TransformersEngine.tree must be 'mask' or 'cache' (model.scoring_tree); got {self.tree!r}")
        import torch
        from transformers import AutoModelForCausalLM

        self.tokenizer = load_tokenizer(self.model_path)
        self.encoder = Encoder(self.tokenizer, self.system_prompt)
        self.option_ids = OptionIds(self.tokenizer)
        self.dtype = torch.bfloat16 if engine_precision(self.precision, self.device) == "bf16" else torch.float32
        self.model = AutoModelForCausalLM.from_pretrained(self.model_path, dtype=self.dtype).to(self.device).eval()
        self.context = min(self.max_length, self.model.config.max_position_embeddings)
        self._peft = False

    # --- adapters -------------------------------------------------------------------------------
    def load_adapter(self, name: str, path: str | Path) -> None:
        """Load a PEFT adapter folder under `name` (idempotent). The folder is checked against this
        base first (adapter_check: AdapterUnusable says what is wrong); a load that still fails
        leaves the model as it was: the base and the adapters loaded before, weight for weight."""
        if name in self.adapters:
            return
        check_adapter(name, path, self.model_path)
        try:
            self._inject(name, path)
        except Exception as error:
            self._rebuild()  # peft injects layers into the base in place before it reads the weights
            raise AdapterUnusable(f"adapter {name!r} cannot be used: loading it failed ({type(error).__name__}: {error})") from error
        self.adapters[name] = str(path)

    def _inject(self, name: str, path: str | Path) -> None:
        from peft import PeftModel

        # The adapter computes in the model's format, whatever it was saved in (peft would upcast a
        # bf16 adapter to fp32 and make every LoRA layer cast back and forth on a bf16 model).
        module = _module_name(name)
        if not self._peft:
            self.model = PeftModel.from_pretrained(self.model, str(path), adapter_name=module, autocast_adapter_dtype=False).eval()
            self._peft = True
        else:
            self.model.load_adapter(str(path), adapter_name=module, autocast_adapter_dtype=False)
        self.model.to(self.dtype)

    def _rebuild(self) -> None:
        """The base model read again from its folder and the adapters loaded before put back on it."""
        from transformers import AutoModelForCausalLM

        loaded, self.adapters, self._peft = dict(self.adapters), {}, False
        self.model = AutoModelForCausalLM.from_pretrained(self.model_path, dtype=self.dtype).to(self.device).eval()
        for name, path in loaded.items():
            self._inject(name, path)
            self.adapters[name] = path

    def unload_adapter(self, name: str) -> None:
        if name in self.adapters:
            self.model.delete_adapter(_module_name(name))
            del self.adapters[name]

    def _use(self, adapter: str | None) -> Any:
        """A context manager running the model with `adapter` (None: the base model)."""
        if adapter is None:
            return self.model.disable_adapter() if self._peft else contextlib.nullcontext()
        if adapter not in self.adapters:
            raise unknown_adapter(adapter)
        self.model.set_adapter(_module_name(adapter))
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
            layout = option_layout(prompt_ids, [self.option_ids(str(o)) for o in opts], eot)
            if len(layout["input_ids"]) > self.context:
                raise ContextOverflow(
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
        max_new_tokens: int = PAPER_MAX_NEW_TOKENS, adapter: str | None = None, logprobs: bool | int = False,
    ) -> list[list[dict[str, Any]]]:
        """Sample n continuations of each already-templated prefix text.

        Returns per prefix n dicts: text, tokens, token_ids, finish_reason ('stop' or 'length') and, with
        logprobs, the chosen tokens' log-probabilities (an int k: and the k most likely tokens at each step)."""
        import torch

        eot = self.encoder.eot_ids[0]
        encoded = [x for x in encode_prefixes(self.tokenizer, prefixes, max_new_tokens, self.context) for _ in range(n)]  # rows: prefixes x n
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

        top = top_count(logprobs)
        sampler = None if temperature < GREEDY_BELOW else SeededSampler(prefixes, n, temperature, top_p, keep_scores=top is not None)
        with torch.inference_mode(), self._use(adapter):
            out = self.model.generate(
                input_ids=ids.to(self.device), attention_mask=attention.to(self.device), do_sample=False,
                temperature=None, top_p=None, top_k=None, logits_processor=LogitsProcessorList([sampler] if sampler else []),
                max_new_tokens=max_new_tokens, eos_token_id=eot,
                pad_token_id=self.encoder.pad_id, output_scores=top is not None, return_dict_in_generate=True,
            )
        new = out.sequences[:, width:].cpu()
        scores = None
        if top is not None:  # the warped distribution each token was drawn from (greedy: the model's own)
            steps = sampler.warped if sampler else out.scores
            scores = torch.stack([torch.log_softmax(s.float(), dim=-1) for s in steps], dim=1).cpu()
        results: list[list[dict[str, Any]]] = []
        for row in range(new.shape[0]):
            step_logprob = (lambda j, t, row=row: scores[row, j, t]) if scores is not None else None
            step_top = (lambda j, row=row: _top_tokens(scores[row, j], top)) if scores is not None and top else None
            if row % n == 0:
                results.append([])
            results[-1].append(completion(self.tokenizer, eot, new[row].tolist(), step_logprob, step_top))
        return results


def _top_tokens(logprobs: Any, k: int) -> list[tuple[int, float]]:
    """The k most likely (token, log-probability) pairs of one step, leaving out tokens top_p cut (-inf)."""
    import torch

    values, ids = torch.topk(logprobs, min(k, logprobs.shape[-1]))
    return [(int(t), float(v)) for t, v in zip(ids.tolist(), values.tolist()) if v > float("-inf")]
