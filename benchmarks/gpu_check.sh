#!/usr/bin/env bash
# The GPU checks of record in one run: benchmarks/gpu_check.sh OUTDIR
#
# Needs only what a bare GPU machine's image has (torch, transformers, peft, safetensors, tokenizers, pyarrow,
# pytest): t5peft runs from this checkout through PYTHONPATH, nothing is installed or downloaded. The shared data
# is $T5PEFT_SHARED (default ../shared; a copy inside the checkout works too). Stages, each with a time limit, in
# order of importance; a stage that fails or runs out of time is recorded and the next one runs:
#   1. bench    benchmarks/train_step.py: ms per training step, t5peft eager / compiled + CUDA graph against
#               transformers + peft (eager; compiled for the methods in $HF_COMPILE), t5-small, batch 16 x 128, bf16
#   2. plan     benchmarks/plan_time.py: the whole configs/seed.toml plan extrapolated from the compiled path
#   3. compare  t5peft compare configs/gpu-check.toml --jobs 4: every method, t5-small dimensions, random init,
#               2,000 training reviews, the full 25,000-review test split
#   4. tests    the tests that train on CUDA: compiled/graph step against eager for every method, exact resume
# OUTDIR receives summary.md (the tables), gpu_check.log (every stage's output) and the stages' JSON files.
set -uo pipefail
OUT=${1:?usage: benchmarks/gpu_check.sh OUTDIR}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export T5PEFT_SHARED="${T5PEFT_SHARED:-../shared}"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export TORCHINDUCTOR_CACHE_DIR="${TORCHINDUCTOR_CACHE_DIR:-/tmp/t5peft-inductor-cache}"
HF_COMPILE=${HF_COMPILE:-lora}
LOG="$OUT/gpu_check.log"
WORK=$(mktemp -d /tmp/gpu_check.XXXXXX)
: > "$LOG"

say() { echo "[gpu_check $(date -u +%H:%M:%S) +${SECONDS}s] $*" | tee -a "$LOG"; }

stage() {  # stage NAME LIMIT_SECONDS COMMAND...
    local name=$1 limit=$2
    shift 2
    say "stage $name: start (limit ${limit}s): $*"
    local start=$SECONDS
    timeout -k 10 "$limit" "$@" >> "$LOG" 2>&1
    local rc=$?
    say "stage $name: exit $rc after $((SECONDS - start))s"
    echo "| $name | $rc | $((SECONDS - start)) |" >> "$WORK/stages.md"
}

say "machine: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null)"
python3 - >> "$LOG" 2>&1 <<'PY'
import torch, transformers, peft, t5peft
print("torch", torch.__version__, "cuda", torch.version.cuda, "device", torch.cuda.get_device_name(0))
print("transformers", transformers.__version__, "peft", peft.__version__, "t5peft", t5peft.__version__)
PY

stage bench 200 python3 benchmarks/train_step.py --device cuda --compiled --hf-compile "$HF_COMPILE" \
    --methods full,lora,adalora,prompt,ia3 --warmup 5 --repeats 20 --shared "$T5PEFT_SHARED" \
    --output "$OUT/train_step_cuda.json"
stage plan 90 python3 benchmarks/plan_time.py --config configs/seed.toml \
    --model-config "$T5PEFT_SHARED/models/t5-small" --tokenizer "$T5PEFT_SHARED/models/t5-small" \
    --data "$T5PEFT_SHARED/data/imdb" --device cuda --steps 40 --warmup 5 --eval-size 4096 \
    --output "$OUT/plan_time_cuda.json"
stage compare 150 python3 -m t5peft.cli compare --config configs/gpu-check.toml --output "$WORK/compare" \
    --jobs 4 --no-progress
cp "$WORK/compare/t5_peft_results.json" "$OUT/compare_results.json" 2>/dev/null
stage tests 120 python3 -m pytest -q -p no:cacheprovider -x tests/test_compiled_step.py -k "cuda"

{
    echo "# gpu_check, $(date -u +%Y-%m-%d) (UTC)"
    echo
    echo "$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null); $(grep -m2 -E '^(torch|transformers) ' "$LOG" | tr '\n' ';')"
    echo
    echo "| stage | exit | seconds |"
    echo "|---|---|---|"
    cat "$WORK/stages.md"
    echo
    echo "Total: ${SECONDS}s"
    for f in train_step_cuda plan_time_cuda; do
        [ -f "$OUT/$f.json" ] && python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print(); print(r.get('header','')); print(); print(r['table'])" "$OUT/$f.json"
    done
    [ -f "$WORK/compare/results.md" ] && { echo; cat "$WORK/compare/results.md"; }
} > "$OUT/summary.md" 2>> "$LOG"
cat "$OUT/summary.md"
