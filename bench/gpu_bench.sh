#!/usr/bin/env bash
# GPU bench for one large GPU with no network (bench/gpu_bench.py says what it measures):
# Qwen3-8B LoRA r256, 8B QLoRA, 4B full FT (random weights from bench/gpu_configs/*.json) -> peak
# memory next to the study's table and our estimator, tokens/s, MFU; 8B generation items/s.
# Needs a Python with torch (CUDA), transformers, peft, accelerate; nothing from the network.
#
#   bench/gpu_bench.sh                    # on the GPU host (about 5-10 minutes on one H200)
#   bench/gpu_bench.sh --dry-run          # tiny shapes on CPU, anywhere (the test suite runs this)
#   bench/gpu_bench.sh --fetch-wheels     # BEFORE shipping, on a machine with network: puts the
#                                         # bitsandbytes wheel into bench/wheels/ (git-ignored)
# Other arguments go to `python -m bench.gpu_bench` (--cases, --seq, --batch, --json FILE ...).
# PYTHON=/path/to/python picks the interpreter (default: .venv/bin/python, else python3).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=$(command -v python3)
WHEELS=bench/wheels
BNB=${BNB_VERSION:-0.50.2}

if [ "${1:-}" = "--fetch-wheels" ]; then
  # bitsandbytes ships one manylinux x86_64 wheel for every Python 3 (py3-none): no other deps needed
  "$PY" -m pip download "bitsandbytes==$BNB" --no-deps --only-binary=:all: \
      --platform manylinux_2_24_x86_64 -d "$WHEELS"
  ls -la "$WHEELS"
  exit 0
fi

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 FTLAB_LOG_FORMAT=text
if ! "$PY" -c 'import bitsandbytes' 2>/dev/null; then
  if ls "$WHEELS"/bitsandbytes-*.whl >/dev/null 2>&1; then
    echo "installing bitsandbytes from $WHEELS (no network)"
    "$PY" -m pip install --no-index --no-deps --find-links "$WHEELS" "bitsandbytes==$BNB"
  else
    echo "bitsandbytes missing and no wheel in $WHEELS: QLoRA is skipped (run --fetch-wheels before shipping)"
    set -- --cases "Qwen3-8B LoRA r256,Qwen3-4B full FT" "$@"
  fi
fi
exec "$PY" -m bench.gpu_bench "$@"
