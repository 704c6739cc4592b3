#!/usr/bin/env bash
# Pretrain t5-mini on a GPU for ~150 s of training, probe it against random init (3 seeds), keep a small
# bf16 checkpoint. Everything lands in OUTDIR: results.json, metrics.jsonl, log.txt, backbone/ (shards <= 16 MiB).
#
#   T5PEFT_SHARED=/path/to/shared benchmarks/gpu_pretrain.sh OUTDIR            # the GPU run (~5 min)
#   T5PEFT_SHARED=../shared benchmarks/gpu_pretrain.sh /tmp/check --tiny     # a CPU check of the script
#
# Extra arguments go to benchmarks/gpu_pretrain.py (see its --help). Needs torch, numpy, pyarrow, tokenizers,
# safetensors, tqdm and matplotlib-free Python; no install step: it runs from the checkout with PYTHONPATH=src.
set -euo pipefail
if [ $# -lt 1 ]; then
    echo "usage: T5PEFT_SHARED=<shared folder> $0 OUTDIR [--tiny] [options of gpu_pretrain.py]" >&2
    exit 2
fi
: "${T5PEFT_SHARED:?set T5PEFT_SHARED to the shared folder (data/imdb, models/t5-small)}"
mkdir -p "$1"
OUT=$(cd "$1" && pwd)
shift
T5PEFT_SHARED=$(cd "$T5PEFT_SHARED" && pwd)
export T5PEFT_SHARED
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
PYTHONPATH=src "$PYTHON" benchmarks/gpu_pretrain.py "$OUT" "$@" 2>&1 | tee "$OUT/log.txt"
