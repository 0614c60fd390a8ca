#!/usr/bin/env bash
# One GPU check in one call: on whatever GPUs this machine has, run
#   1. the smoke params end to end on CUDA (six notebooks, papermill), with the memory plan first;
#   2. the probe, SFT and evaluation benchmarks against their naive baselines (each prints its ratio);
#   3. a 2-rank torchrun run of the smoke params where there are 2 GPUs or more;
# and print one table at the end. Everything it writes goes under $OUT (default ./gpu-suite), logs included.
#
#   bash benchmarks/gpu_suite.sh                      # from the repository root, the package on PYTHONPATH or installed
#   OUT=/tmp/suite PY=python3 bash benchmarks/gpu_suite.sh
#
# On a machine without pip access run it from the tree (PYTHONPATH=.) with the embedded model's GGUF staged as
# ../shared/tools/gpu-stage-smollm2.sh explains; it needs torch, transformers, peft, papermill (smoke run) and gguf.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
OUT=${OUT:-gpu-suite}
mkdir -p "$OUT"
export PYTHONPATH="${PYTHONPATH:-}:$PWD"
GPUS=$($PY -c "import torch; print(torch.cuda.device_count())" 2>/dev/null || echo 0)
CARD=$($PY -c "import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no CUDA GPU')" 2>/dev/null)
echo "gpu_suite: $GPUS GPU(s): $CARD; logs in $OUT"
declare -a ROWS

row() { ROWS+=("$1|$2|$3"); }
last() { grep -E "$2" "$1" | tail -n 1; }

# 1. smoke params end to end on CUDA (the plan first: its last line says fits / does not fit)
$PY -m sftnb plan params/smoke.yaml > "$OUT/plan.log" 2>&1
row "memory plan, smoke params" "$(tail -n 1 "$OUT/plan.log")" "$OUT/plan.log"
t0=$(date +%s)
if $PY -m sftnb run params/smoke.yaml --out "$OUT/smoke-run" --force > "$OUT/smoke.log" 2>&1; then
  row "smoke params end to end (6 notebooks)" "ok in $(( $(date +%s) - t0 )) s" "$OUT/smoke.log"
else
  row "smoke params end to end (6 notebooks)" "FAILED: $(tail -n 1 "$OUT/smoke.log")" "$OUT/smoke.log"
fi

# 2. benchmarks against their naive baselines (bf16 on the GPU: dtype auto)
if [ "$GPUS" -ge 1 ]; then
  $PY benchmarks/bench_probe.py --prompts 1024 --samples 10 --naive-batch 1024 --batch-tokens 65536 \
      > "$OUT/probe.log" 2>&1
  row "probe sampling, 1024 prompts x 10, 32 tokens" "$(last "$OUT/probe.log" 'sftnb generate|speed-up' | tr -s ' ')" \
      "$(last "$OUT/probe.log" 'speed-up')"
  $PY benchmarks/bench_sft_eval.py --precision bf16-mixed --samples 1920 --questions 16384 --naive-batch 4096 --skip-one-by-one \
      > "$OUT/sft_eval.log" 2>&1
  row "SFT, 1920 samples, batch 8" "$(last "$OUT/sft_eval.log" 'SFT  ratio')" "$(last "$OUT/sft_eval.log" 'SFT  sftnb')"
  row "greedy evaluation, 16384 questions" "$(last "$OUT/sft_eval.log" 'eval ratio')" \
      "$(last "$OUT/sft_eval.log" 'eval sftnb')"
else
  row "benchmarks" "skipped: no CUDA GPU" "-"
fi

# 3. two ranks sharing one run's units (torchrun), where there are 2 GPUs or more
if [ "$GPUS" -ge 2 ]; then
  t0=$(date +%s)
  if $PY -m torch.distributed.run --standalone --nproc_per_node 2 -m sftnb run params/smoke.yaml \
      --out "$OUT/smoke-2ranks" --force > "$OUT/two_ranks.log" 2>&1; then
    row "smoke params, torchrun 2 ranks" "ok in $(( $(date +%s) - t0 )) s" "$(last "$OUT/two_ranks.log" 'units done')"
  else
    row "smoke params, torchrun 2 ranks" "FAILED: $(tail -n 1 "$OUT/two_ranks.log")" "$OUT/two_ranks.log"
  fi
else
  row "smoke params, torchrun 2 ranks" "skipped: $GPUS GPU(s)" "-"
fi

echo
echo "| check | result | detail |"
echo "| --- | --- | --- |"
for r in "${ROWS[@]}"; do IFS='|' read -r a b c <<< "$r"; echo "| $a | $b | $c |"; done
echo "(card: $CARD)"
