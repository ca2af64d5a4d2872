"""The config sections of the flow's stages: ingest, train (with its LoRA section), serve (with its
autoscaling section), simulate, evaluate, the learning curve and pilots. schema.py gathers them into Config."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from socrates_ray.config.base import EvalSetting, Section, SplitSetting


class IngestSection(Section):
    max_length: int = Field(
        1024, ge=32, description="Tokens per training row; samples longer than this are dropped and counted."
    )
    layout: Literal["pack", "pad_longest", "pad_max_length", "shared_prefix"] = Field(
        "pack",
        description="pack = several samples per fixed-length row (no cross-attention); "
        "pad_longest = one sample per row padded to the longest in the batch; "
        "pad_max_length = one sample per row padded to max_length; "
        "shared_prefix = a participant's samples in one row behind the prompt tokens they share (system prompt, "
        "persona, instruction) written once, each sample reading that prefix and itself: the same losses for fewer "
        "tokens where participants answer several questions; rows are padded to the longest in the batch, and the "
        "shuffle moves whole participants (docs/data.md, \"Shared prefixes\").",
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
        "that fit the object store on one machine: a lost node loses the blocks it held, and Ray cannot rebuild blocks "
        "made by an actor pool, so on multi-node clusters and at SocSci210 scale leave it off and stream.",
    )
    tokenize_in_driver_below: int = Field(
        20000, ge=0, description="With ingest.materialize: a split of fewer samples than this is tokenized in the driver "
        "process, where small splits finish before a pool of tokenizer actors has started; larger splits use the pool, "
        "on every core. The two paths order the rows differently, so a run records which it used. 0: always the pool.",
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


class DpoSection(Section):
    beta: float = Field(0.1, gt=0, description="DPO's beta: how far the policy may move from the reference (larger = less).")
    sft_weight: float = Field(
        0.0, ge=0, description="Adds this multiple of the chosen answers' per-token negative log-likelihood to the DPO loss.",
    )
    pairs_per_row: int = Field(1, ge=1, description="Pairs per training answer, each with a different rejected answer.")
    rejected: Literal["uniform", "distance"] = Field(
        "uniform", description="How the rejected answer is drawn from the other answers of the same cell: uniform = as "
        "often as people gave it; distance = weighted by how far it is from the chosen answer.",
    )


class PersonaProbeSection(Section):
    weight: float = Field(
        0.0, ge=0, description="sft: adds this multiple of a persona probe's loss to the answers' loss (0 = off). The "
        "probe is a linear layer, used in training only and never exported, that must recover each persona field's "
        "value from the hidden state at the position that predicts the answer, as the MLP of train.persona_probe.layer "
        "reads it: attention is rewarded for bringing the persona to where the answer is predicted, where the MLP can "
        "combine it with the stimulus. Needs the prepared split's demographic column. train.method=dpo ignores it.",
    )
    until: float = Field(
        0.5, gt=0, le=1, description="The probe's weight falls linearly from train.persona_probe.weight at the first "
        "step to 0 at this share of the run's optimizer steps (1 = to 0 at the last step); the rest of the run fits "
        "the answers alone.",
    )
    layer: int = Field(-1, description="Whose MLP input the probe reads (0-based; negative counts from the last layer).")
    buckets: int = Field(64, ge=2, description="Classes per persona field: each value is hashed into one of them.")


class AnchorTeacherSection(Section):
    weight: float = Field(
        0.0, ge=0, description="sft: adds this multiple of a soft-label loss to the answers' loss (0 = off). The "
        "regression anchor that `socrates-ray evaluate` reports (a ridge regression on the persona fields, the stimulus "
        "words and their products with party, ideology and age) is fitted on train.setting's train split before "
        "tokenizing; each training row's anchor distribution over its options is the target of the model's "
        "distribution over the same option tokens at the position that predicts the answer. Rows whose options are "
        "not one token each get no soft label. train.method=dpo ignores it.",
    )
    contrast: float = Field(
        0.0, ge=0, description="sft: adds this multiple of a within-cell contrast to the loss (0 = off; fits the "
        "anchor even where weight is 0). The soft label mostly teaches the stimulus; the contrast teaches how the "
        "persona moves the answer: training rows are shuffled in pairs from the same cell (study, condition, task), "
        "and in each micro-batch every example's expected answer position (0 to 1 across its options) minus its "
        "cell's mean must match the anchor's, in squared error. Pairs are arranged where the train split is "
        "tokenized in the driver (ingest.materialize, a split under ingest.tokenize_in_driver_below); elsewhere the "
        "run says so and the term reads only the cells a micro-batch happens to share.",
    )

    @property
    def fitted(self) -> bool:
        """Whether training needs the anchor fitted (either term on)."""
        return self.weight > 0 or self.contrast > 0


class TrackingSection(Section):
    project: str = Field("socrates_ray", description="The W&B project and the MLflow experiment runs are logged to.")
    wandb_mode: Literal["offline", "online"] = Field(
        "offline", description="offline: W&B writes the run to <run>/wandb only (upload later with `wandb sync`); online: "
        "logs live to W&B, which needs WANDB_API_KEY in the workers' environment (the job's runtime_env).",
    )
    mlflow_tracking_uri: str | None = Field(
        None, description="Where MLflow runs go (http://host:5000, sqlite:///path/mlflow.db, databricks); null: "
        "$MLFLOW_TRACKING_URI, else a SQLite store <run>/mlflow.db.",
    )


class TrainSection(Section):
    method: Literal["sft", "dpo"] = Field(
        "sft", description="Training method; each has a loop of its own (train/sft_loop.py, train/dpo_loop.py). sft = "
        "supervised finetuning on each participant's own answer, the loss on the answer tokens only (the paper's SFT); "
        "dpo = preference optimisation of the participant's answer over another participant's answer to the same prompt, "
        "against the reference policy the run starts from (train.init_adapter for LoRA: the SFT adapter; model.path for full).",
    )
    dpo: DpoSection = Field(default_factory=DpoSection, description="train.method=dpo settings.")
    prompt_loss_weight: float = Field(
        0.0, ge=0, description="sft: adds this multiple of the prompt tokens' mean next-token loss to the answers' loss "
        "(the prompt loss weight of hosted fine-tuning APIs; 0 = answers only, the paper's recipe). The eval loss stays "
        "the answers' alone.",
    )
    persona_probe: PersonaProbeSection = Field(
        default_factory=PersonaProbeSection, description="sft: a training-only probe that rewards reading the persona "
        "at the answer (docs/training.md).",
    )
    anchor_teacher: AnchorTeacherSection = Field(
        default_factory=AnchorTeacherSection, description="sft: the regression anchor's distribution over each training "
        "row's options as a soft label beside the answer (docs/training.md).",
    )
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
        "fp32 on other CPUs (socrates_ray/infer/precision.py).",
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
        "each example's length^2: the choice for packed rows on CPU); varlen: no mask, one flash-attention call per "
        "layer over all the batch's examples (torch's varlen_attn: CUDA and bf16 only, train.use_gpu). The same losses "
        "to float rounding; with one example a row (layout pad_longest) they differ by rounding only.",
    )
    lora: LoraSection = Field(default_factory=LoraSection, description="LoRA settings.")
    init_adapter: str | None = Field(
        None, description="Start from this LoRA adapter folder instead of a fresh adapter: its rank, alpha and target "
        "modules replace train.lora's, its weights are the starting point (a pilot's per-study adapter continues the "
        "general one). train.finetuning must be lora.",
    )
    eval_every: int = Field(50, ge=1, description="Optimizer steps between eval-loss passes.")
    log_every: int = Field(
        10, ge=1, description="Optimizer steps between progress lines on the terminal and metrics reported to Ray Train "
        "(ray.train.report: its dashboard and Tune see them); every step still goes to metrics.jsonl and the trackers of "
        "train.report_to; eval steps and the last step always print.",
    )
    report_to: list[Literal["tensorboard", "wandb", "mlflow"]] = Field(
        default_factory=lambda: ["tensorboard"], description="Experiment trackers rank 0 logs every step's metrics to, "
        "besides metrics.jsonl; the run's config is logged once. wandb and mlflow need the tracking extra "
        "(pip install 'socrates_ray[tracking]'); settings in train.tracking.",
    )
    tracking: TrackingSection = Field(default_factory=TrackingSection, description="Settings of the W&B and MLflow trackers.")
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
    def _init_adapter_needs_lora(self) -> "TrainSection":
        if self.init_adapter is not None and self.finetuning != "lora":
            raise ValueError(f"train.init_adapter continues a LoRA adapter, so train.finetuning must be lora (got "
                             f"{self.finetuning}); unset train.init_adapter or set train.finetuning=lora")
        return self

    @model_validator(mode="after")
    def _teacher_reads_answer_logits(self) -> "TrainSection":
        if self.method == "sft" and self.anchor_teacher.fitted and self.prompt_loss_weight > 0:
            teacher = self.anchor_teacher
            raise ValueError(
                f"train.anchor_teacher (weight={teacher.weight:g}, contrast={teacher.contrast:g}) and "
                f"train.prompt_loss_weight={self.prompt_loss_weight:g}: the anchor teacher reads the answers' logits, which "
                "the prompt loss's forward does not compute apart; set train.prompt_loss_weight=0 or both teacher terms to 0"
            )
        return self

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
        0.01, ge=0, description="How long a batch waits to fill; a lone request waits at most this long. Under steady "
        "load from clients that wait for each answer, the next requests reach a busy replica slowly (its request "
        "handling shares the GIL with the model thread), so short waits leave batches small: raise it (0.05) for "
        "throughput under many clients, on GPUs especially; bench/serve.py measures the trade.",
    )
    max_ongoing_requests: int = Field(64, ge=1, description="Requests a replica accepts at once (>= max_batch_size so batches fill); with model.engine vllm, the requests in its engine at once.")
    autoscaling: AutoscalingSection = Field(default_factory=AutoscalingSection, description="Replica autoscaling.")
    num_cpus: float = Field(1, gt=0, description="CPUs per replica.")
    num_gpus: float = Field(0, ge=0, description="GPUs per replica (1 on a GPU cluster).")
    auth_token_env: str | None = Field(
        None, description="Environment variable holding a bearer token; when set, requests need 'Authorization: Bearer <token>'."
    )
    auth_token_file: str | None = Field(
        None, description="A file holding the bearer token (its first line), instead of auth_token_env: on a cluster, a file "
        "on shared storage readable by its owner only keeps the token off the job's entrypoint and runtime_env, which "
        "`ray job list` shows.",
    )
    max_body_bytes: int = Field(1_000_000, ge=1024, description="Larger request bodies get 413.")
    precision: Literal["auto", "bf16", "fp32"] = Field(
        "auto", description="Number format of the replica's model: auto = bf16 on GPU and on CPUs with native bf16, else fp32."
    )
    max_n: int = Field(64, ge=1, description="Largest n (samples per request).")
    max_tokens_limit: int = Field(256, ge=1, description="Largest max_tokens per request.")
    max_length: int = Field(2048, ge=64, description="Context cap in tokens (also bounded by the model).")

    @model_validator(mode="after")
    def _one_token_source(self) -> "ServeSection":
        if self.auth_token_env and self.auth_token_file:
            raise ValueError("serve.auth_token_env and serve.auth_token_file are both set; keep one (the file keeps the "
                             "token off the job's entrypoint and environment)")
        return self


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
    http_retries: int = Field(8, ge=0, description="backend=http: times one request is sent again after a back-pressure or "
        "unavailable answer (429, 502, 503, 504) or a failed connection (a restarting replica), waiting twice as long each "
        "time, capped, or as the server's Retry-After says; 0 = stop at the first.")
    cpus_per_replica: float = Field(1, gt=0, description="CPUs per replica.")
    gpus_per_replica: float = Field(0, ge=0, description="GPUs per replica.")
    batch_size: int = Field(16, ge=1, description="Rows per scoring call.")
    precision: Literal["auto", "bf16", "fp32"] = Field(
        "auto", description="Number format of the local replicas' model: auto = bf16 on GPU and on CPUs with native bf16 "
        "matrix instructions, else fp32 (bf16 moves option probabilities slightly; fp32 for exact reproduction).",
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
    settings: list[EvalSetting] = Field(
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
    parity_cells: int = Field(
        20, ge=0, description="The parity check: the eval split's cells with the most answers, scored with up to "
        "parity_per_cell answers each, so subgroups have enough people to compare (a quick evaluation's few answers a "
        "cell cannot measure subgroup gaps). 0 = off.",
    )
    parity_per_cell: int = Field(200, ge=6, description="Answers scored per parity-check cell.")
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
        40, ge=2, description="Rows scored per fit-check cell (not simulate.max_per_cell: against a handful of answers a "
        "cell even the true distributions are far from the sample, so the check would measure sampling noise).",
    )


class CurveSection(Section):
    fractions: list[Annotated[float, Field(gt=0, lt=1)]] = Field(
        default_factory=lambda: [0.01, 0.05, 0.1, 0.25, 0.5], min_length=2,
        description="`socrates-ray curve`: shares of each study's participants to train on, one run each (unseen_participants; "
        "the paper: gains saturate near 0.1). Every run is evaluated on the same held-out participants.",
    )
    epochs: int = Field(2, ge=1, description="Passes over each run's training split (train.max_steps still caps the steps).")
    output_dir: str | None = Field(None, description="Where the curve's prepared splits, table and plot go; default <run>/curve.")


class PilotSection(Section):
    epochs: int = Field(
        8, ge=1, description="`socrates-ray pilot`: passes over the pilot's rows when continuing the general adapter on them "
        "(a pilot holds a few hundred rows: one pass is a handful of steps).",
    )
    lr: float | None = Field(None, gt=0, description="Peak learning rate of a pilot's training; default train.lr.")
    num_workers: int = Field(1, ge=1, description="Training workers of a pilot run (its few rows need no more).")
    sizes: list[Annotated[int, Field(ge=1)]] = Field(
        default_factory=lambda: [10, 25, 50], min_length=1,
        description="`pilot --from-split`: pilot sizes (participants per study) replayed on held-out studies; each study "
        "is also scored with no pilot (the general adapter), and every size on the same participants in no pilot.",
    )
    studies: int = Field(
        6, ge=1, description="`pilot --from-split`: held-out studies replayed, the largest first (one training run per study "
        "and size).",
    )
    seed: int | None = Field(
        None, description="`pilot --from-split`: the draw of each study's pilot participants; default run.seed (another "
        "seed replays other pilots with the same general adapter).",
    )
    min_held_out: int = Field(
        20, ge=1, description="`pilot --from-split`: participants a study must keep beyond its largest pilot to be replayed.",
    )
    output_dir: str | None = Field(
        None, description="Where pilots' prepared rows, reports and (without serve.adapters_dir) adapters go; default <run>/pilot.",
    )
