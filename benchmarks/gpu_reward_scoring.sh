#!/usr/bin/env bash
# Reward-model scoring on one GPU: pairs/s, transformers against vLLM's pooling runner in process, one run,
# on a 1.1B LlamaForSequenceClassification (TinyLlama-1.1B's shape) built with random weights in bfloat16:
# no downloads. Prints the table and the vLLM/transformers ratio for benchmarks/RESULTS.md
# ("Reward-model scoring: transformers vs vLLM").
#
#   bash benchmarks/gpu_reward_scoring.sh                 # from the repo root, on the GPU machine
#   PAIRS=512 bash benchmarks/gpu_reward_scoring.sh       # a shorter run
#   PY=.venv-vllm/bin/python ARCH=tiny DTYPE=float32 PAIRS=8 bash benchmarks/gpu_reward_scoring.sh --eager  # CPU smoke
#
# Needs torch, transformers, numpy, tokenizers and pydantic; vLLM for the vLLM side. Where `import vllm`
# fails it measures transformers alone and says so: the vLLM wheel is hundreds of MB, more than a
# device session can carry (64 MiB), so run this where `pip install 'prefdata[vllm]'` was possible.
# A missing pydantic can travel as wheels in .whl/ (see the device README): it is installed from there.
# Budget: about 1 min to build and save the model, 1-2 min for vLLM to load and compile, under a
# minute of scoring per backend per repeat (2) at the defaults on an H100.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
PAIRS=${PAIRS:-2048}
ARCH=${ARCH:-llama-1.1b}
DTYPE=${DTYPE:-bfloat16}
OUT=${OUT:-/tmp}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 PREFDATA_NO_HUB=1

if [ -d .whl ] && ! "$PY" -c "import pydantic" 2>/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PY" - <<'EOF'
import importlib
for m in ("torch", "transformers", "tokenizers", "numpy", "pydantic", "vllm"):
    try:
        print(f"{m} {importlib.import_module(m).__version__}")
    except Exception as e:  # noqa: BLE001
        print(f"{m} MISSING ({type(e).__name__}: {e})")
EOF
"$PY" -c "import torch, transformers, pydantic" || { echo "missing torch/transformers/pydantic: cannot run"; exit 2; }
BACKENDS=transformers,vllm
if ! "$PY" -c "import vllm" 2>/dev/null; then
  echo "vLLM is not importable here: measuring transformers only (no vLLM figure from this run)"
  BACKENDS=transformers
fi
"$PY" benchmarks/bench_reward_scoring.py --arch "$ARCH" --dtype "$DTYPE" --pairs "$PAIRS" --repeats 2 \
  --batch-size 32 --max-length 1024 --max-words 300 --gpu-memory-utilization 0.5 --backends "$BACKENDS" "$@" \
  2>&1 | grep -v -E '^\([A-Za-z_-]+ pid=[0-9]+\) (INFO|DEBUG)|^(INFO|DEBUG) ' | tee "$OUT/reward_scoring.txt"
