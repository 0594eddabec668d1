#!/usr/bin/env bash
# GPU smoke: the `smoke` experiment (train LoRA -> INT8 -> evaluate on ARC) with a REAL small model
# on CUDA, on the embedded stack (services as local processes, local storage; no Docker needed).
# Prints the summary table, wall time and peak GPU memory. Without a CUDA GPU it prints
# "skipped: no GPU" and exits 0, so it is safe to call anywhere. Not part of `make test`.
#
#   bench/gpu_smoke.sh                          # Qwen/Qwen3-0.6B from the hub (or the HF cache)
#   MODEL=/models/Qwen3-0.6B bench/gpu_smoke.sh # a local folder
# Offline without the model: falls back to the tiny random Qwen3 (still exercises CUDA end to end).
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-.venv/bin/python}
BIN=$(dirname "$PY")
SHARED=${SHARED:-../shared}
MODEL=${MODEL:-Qwen/Qwen3-0.6B}
NAME=${MODEL_NAME:-Qwen3-0.6B-base}

if ! gpu=$("$PY" -c 'import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")' 2>/dev/null) \
   || [ -z "$gpu" ]; then
  echo "skipped: no GPU (torch.cuda.is_available() is False or torch is missing in $PY)"
  exit 0
fi

# Own state dir and ports, so a running `ftlab up` stack or earlier results are never touched.
export FTLAB_HOME=${FTLAB_HOME:-$PWD/.ftlab/gpu-smoke}
export FTLAB_STORAGE=local FTLAB_DEVICE=cuda FTLAB_LOG_FORMAT=text
export FTLAB_TRAINER_ADDR=127.0.0.1:50161 FTLAB_QUANTIZER_ADDR=127.0.0.1:50162 FTLAB_EVALUATOR_ADDR=127.0.0.1:50163
export PREFECT_HOME=$FTLAB_HOME/prefect PREFECT_SERVER_ANALYTICS_ENABLED=false
mkdir -p "$FTLAB_HOME"
ftlab() { "$BIN/ftlab" "$@"; }

echo "== GPU: $gpu ($(nvidia-smi -i 0 --query-gpu=driver_version,memory.total --format=csv,noheader 2>/dev/null | head -1))"
# sample GPU memory every 0.5 s for the peak (the jobs run in child processes of the services)
nvidia-smi -i 0 --query-gpu=memory.used --format=csv,noheader,nounits -lms 500 > "$FTLAB_HOME/gpu-mem.log" 2>/dev/null &
sampler=$!
trap 'kill $sampler 2>/dev/null || true; ftlab down >/dev/null || true' EXIT

ftlab up
if [ -d "$SHARED/datasets/seed" ]; then
  ftlab data import --task arc --source seed --path "$SHARED/datasets/seed" --overwrite
else
  ftlab data import --task arc --source hub --overwrite
fi
if ! ftlab model list | grep -q "^$NAME "; then
  if ! ftlab model import "$MODEL" --name "$NAME"; then
    echo "== $MODEL not reachable (offline?): falling back to the tiny random Qwen3"
    NAME=Qwen3-tiny-base
    ftlab model make-tiny --tokenizer "$SHARED/tokenizers/qwen3" --name "$NAME" --overwrite
  fi
fi

# smoke.yaml as shipped, with the real model as the base
sed -e "s/^name: smoke/name: gpu-smoke/" -e "s/Qwen3-tiny-base/$NAME/" flows/experiments/smoke.yaml \
  > "$FTLAB_HOME/gpu-smoke.yaml"
start=$SECONDS
status=0
ftlab run "$FTLAB_HOME/gpu-smoke.yaml" || status=$?
# The methods that need CUDA (refused at the door on a CPU-only quantizer): HQQ, quantized then
# scored by the evaluator, also with a 4-bit quantized KV cache.
if [ "$status" = 0 ]; then
  HQQ_NAME=$(ftlab quantize --source-model "$NAME" --method hqq --weights-bits 4 --group-size 64 --dataset arc \
             --wait | sed -n 's#.*s3://models/\([^/]*\)/.*#\1#p' | tail -1)
  if [ -n "$HQQ_NAME" ]; then
    ftlab eval --model "$HQQ_NAME" --task ai2_arc --limit 20 --wait || status=$?
    ftlab eval --model "$HQQ_NAME" --task ai2_arc --limit 20 --kv-cache-dtype int4 --wait || status=$?
  else
    echo "== HQQ quantization FAILED"; status=1
  fi
fi
outcome=$([ "$status" = 0 ] && echo succeeded || echo "FAILED (exit $status)")
peak=$(sort -n "$FTLAB_HOME/gpu-mem.log" 2>/dev/null | tail -1)
echo "== gpu-smoke with $NAME on $gpu: flow $outcome in $((SECONDS - start)) s," \
     "peak GPU memory ${peak:-n/a} MiB (GPU 0, all processes)"
exit "$status"
