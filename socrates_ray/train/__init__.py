"""Finetuning on Ray Train + DeepSpeed (LoRA or full), one loop file per method.

trainer.py     plan_run -> deepspeed_config_for -> loop_args_for -> torch_trainer; run_training fits
datasets.py    train.setting's splits as ingest Datasets (streamed, or materialized once)
deepspeed.py   the one DeepSpeed config dict (pure)
model.py       the base model + LoRA (peft), loaded for training
sft_loop.py    train_loop_per_worker for train.method=sft
steps.py       what every method's loop shares: LoopArgs, the loss, collectives, the step's metrics
worker.py      a worker's start, restore, metrics log, progress lines and checkpoint cadence
checkpoint.py  checkpoint layout, ZeRO-3-safe export, the resume state and its fingerprint check
attention.py   per-example attention for packed rows (segments, varlen)
"""
