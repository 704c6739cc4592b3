#!/usr/bin/env bash
# Pretrain t5-mini on a GPU for ~150 s of training, probe it against random init (3 seeds), keep a small
# bf16 checkpoint. Everything lands in OUTDIR, 8 files of at most 16 MiB: results.json, log.txt, backbone/.
#
#   T5PEFT_SHARED=/path/to/shared studies/gpu_pretrain.sh OUTDIR            # the GPU run (~5 min)
#   T5PEFT_SHARED=../shared studies/gpu_pretrain.sh /tmp/check --tiny     # a CPU check of the script
#
# Extra arguments go to studies/gpu_pretrain.py (see its --help). Needs what a bare GPU machine's image has
# (torch, numpy, pyarrow, tokenizers, safetensors, tqdm); nothing is installed: t5peft runs from src/.
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
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export TOKENIZERS_PARALLELISM=true  # tokenising 75,000 reviews uses every core; the data workers never tokenise
export TORCHINDUCTOR_CACHE_DIR="${TORCHINDUCTOR_CACHE_DIR:-/tmp/t5peft-inductor-cache}"
PYTHON=${PYTHON:-python3}
"$PYTHON" studies/gpu_pretrain.py "$OUT" "$@" 2>&1 | tee "$OUT/log.txt"
