#!/usr/bin/env bash
# Build the wheelhouse that scripts/gpu_check.sh installs on a GPU machine with NO network.
# Run it here (any machine that reaches PyPI), copy wheelhouse/ next to the checkout there.
#
#   scripts/gpu_wheelhouse.sh [python-version, default 3.12]   # the GPU machine's Python
#   WITH_TORCH=1 scripts/gpu_wheelhouse.sh                     # also torch==2.13.0 (CUDA, ~3 GB with its nvidia-* wheels)
#   NAMES="hjson pydantic pydantic_core annotated-types typing-inspection" scripts/gpu_wheelhouse.sh
#                                   # only these (plus DeepSpeed): leave out what the GPU image already has
#   WITH_SERVE=1 scripts/gpu_wheelhouse.sh                    # also Ray + Ray Serve's needs, for bench/serve.py
#
# By default the GPU machine's own torch is used (any CUDA build >= 2.4 runs the check); the
# wheelhouse then holds only what such images usually lack: DeepSpeed and the pinned Hugging Face
# stack. Versions come from constraints.txt, so the GPU run uses what CI tested. DeepSpeed ships
# only a source distribution: it is built here into a pure-Python wheel (its CUDA ops are
# JIT-compiled on first use there, which needs nvcc and ninja on the GPU machine).
set -euo pipefail
cd "$(dirname "$0")/.."
PYV=${1:-3.12}
OUT=${WHEELHOUSE:-wheelhouse}
PY=${PYTHON:-.venv/bin/python}
mkdir -p "$OUT"
pin() { grep -iE "^($1)==" constraints.txt | head -1; }
NAMES=${NAMES:-"transformers peft accelerate tokenizers safetensors huggingface_hub hf-xet pydantic pydantic_core annotated-types \
typing-inspection typing_extensions hjson py-cpuinfo msgpack ninja einops psutil PyYAML pyarrow numpy packaging regex tqdm \
filelock fsspec"}
# Ray Serve's imports beyond what a CUDA image usually has (ray itself is trimmed below: the whole
# wheel is ~79 MB, over some upload limits; scripts/trim_ray_wheel.py makes it ~30 MB).
SERVE_NAMES="ray fastapi starlette uvicorn opentelemetry-api grpcio grpcio-reflection protobuf pydantic pydantic_core \
annotated-types typing-inspection jsonschema jsonschema-specifications referencing rpds-py aiohttp-cors colorful"
[ -n "${WITH_SERVE:-}" ] && NAMES="$NAMES $SERVE_NAMES"
PINS=$(for n in $NAMES; do pin "$n"; done | sort -u)
[ -n "${WITH_TORCH:-}" ] && PINS="$PINS torch==2.13.0"
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version "$PYV" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 --platform any -d "$OUT" $PINS
# No build isolation: DeepSpeed's setup.py imports torch, which this environment has.
"$PY" -m pip wheel --quiet --no-deps --no-build-isolation -w "$OUT" "$(pin deepspeed)"
if [ -n "${WITH_SERVE:-}" ]; then
  for w in "$OUT"/ray-*.whl; do "$PY" scripts/trim_ray_wheel.py "$w"; done
fi
ls -1 "$OUT" | sed 's/^/  /'
du -sh "$OUT"
