#!/usr/bin/env bash
# The GPU check (issue 5): on one NVIDIA GPU, with no network, in under 8 minutes: bf16 ZeRO-2 and
# ZeRO-3 LoRA training steps and DPO steps on a random ~0.5B Qwen2-architecture model (tokens/s, MFU, peak GPU
# memory) and the exact-distribution scorer's throughput. See scripts/gpu_check.py. Where Ray Serve
# can be imported (the venv, or a wheelhouse built with WITH_SERVE=1), it first runs bench/serve.py
# on the GPU in sample and distribution mode (issue 4's batching target), SERVE_ARGS passed on.
#
#   scripts/gpu_check.sh [--out results.json] [--peak-tflops N]
#   SERVE_ARGS="--requests 128" scripts/gpu_check.sh        # a shorter serve benchmark
#   SKIP_SERVE=1 scripts/gpu_check.sh                       # the training/scoring check only
#   SERVE_MODES=sample scripts/gpu_check.sh                 # bench/serve.py in sample mode only
#   WITH_VLLM=1 scripts/gpu_check.sh                        # + bench/serve.py --engine both (vllm installed)
#
# Packages: the project's own venv (make install) if it exists; otherwise the machine's python3
# (PYTHON=...) plus, for whatever it lacks, wheels from ./wheelhouse (WHEELHOUSE=...), installed
# offline into a private folder. Build that wheelhouse beforehand where PyPI is reachable:
#   scripts/gpu_wheelhouse.sh 3.12      # the GPU machine's Python version
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
NEEDS="import deepspeed, peft, transformers, tokenizers, pydantic, pyarrow, yaml"
if ! "$PYTHON" -c "$NEEDS" 2>/dev/null; then
  WHEELHOUSE=${WHEELHOUSE:-wheelhouse}
  if ! ls "$WHEELHOUSE"/*.whl >/dev/null 2>&1; then
    echo "gpu_check: $PYTHON lacks some of: deepspeed peft transformers tokenizers pydantic pyarrow pyyaml," >&2
    echo "  and there are no wheels in $WHEELHOUSE/. Build them where PyPI is reachable (scripts/gpu_wheelhouse.sh)," >&2
    echo "  copy the folder here, or point WHEELHOUSE at it." >&2
    exit 2
  fi
  SITE=${TMPDIR:-/tmp}/socrates-gpu-site
  echo "gpu_check: installing $(ls "$WHEELHOUSE"/*.whl | wc -l) wheels from $WHEELHOUSE into $SITE (offline)"
  "$PYTHON" -m pip install --quiet --no-index --no-deps --no-compile --upgrade --target "$SITE" "$WHEELHOUSE"/*.whl
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
  "$PYTHON" -c "$NEEDS"
fi
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
if [ -z "${SKIP_SERVE:-}" ]; then
  if "$PYTHON" -c "import ray.serve, fastapi, requests" 2>/dev/null; then
    # The Serve replicas are Ray workers: they find this checkout through PYTHONPATH.
    for mode in ${SERVE_MODES:-sample distribution}; do
      PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" timeout 300 "$PYTHON" bench/serve.py --mode "$mode" ${SERVE_ARGS:-} \
        || echo "gpu_check: bench/serve.py --mode $mode failed (exit $?); going on with the check" >&2
      # WITH_VLLM=1: the same clients against model.engine transformers and vllm (vLLM's CUDA build installed)
      if [ -n "${WITH_VLLM:-}" ]; then
        PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" timeout 400 "$PYTHON" bench/serve.py --mode "$mode" --engine both ${SERVE_ARGS:-} \
          || echo "gpu_check: bench/serve.py --mode $mode --engine both failed (exit $?); going on with the check" >&2
      fi
    done
  else
    echo "gpu_check: no Ray Serve for $PYTHON: skipping bench/serve.py (WITH_SERVE=1 scripts/gpu_wheelhouse.sh carries it)"
  fi
fi
exec timeout 470 "$PYTHON" scripts/gpu_check.py "$@"
