#!/usr/bin/env bash
# One GPU check in one call of at most 8 minutes (issue 23): on whatever GPUs this machine has, run
#   1. the memory plan against measured peaks (benchmarks/plan_check.py: probe and evaluation batches, the
#      package's own budget, run.batch_tokens auto, vs torch.cuda.max_memory_allocated);
#   2. probe sampling, stop rule on, against model.generate: the dynamic engine, then its static KV cache +
#      CUDA graphs path (benchmarks/bench_probe.py);
#   3. greedy evaluation, stop rule on, against batched model.generate: dynamic, then static
#      (benchmarks/bench_sft_eval.py --skip-sft);
#   4. restoration as a GPU run does it (the fine-tuned model on the GPU, the pre-trained weights on the host)
#      against the CPU path, bit for bit (benchmarks/restore_check.py);
#   5. throughput by model size for `sftnb plan`'s time estimate: randomly initialised LLaMA-3-8B, 3.2-3B and
#      3.2-1B shapes in the probe, evaluation and SFT settings (benchmarks/bench_sizes.py), rows written to
#      $OUT/throughput_rows.json as each is measured, in the form of sftnb/resources/throughput.json;
#   6. with SMOKE=1: the smoke params end to end (6 notebooks); with 2 GPUs or more: 2 torchrun ranks on them;
# and print one table at the end, ratios and throughput rows included. Everything goes under $OUT (default
# ./gpu-suite), logs included. Each step has its own time limit (LIMIT_* seconds), so one hang cannot eat the call;
# step 5 gets what is left of SUITE_S (470 s) after steps 1-4, so the call stays under 8 minutes.
#
#   bash benchmarks/gpu_suite.sh                      # from the repository root, the package on PYTHONPATH or installed
#   OUT=/tmp/suite PY=python3 bash benchmarks/gpu_suite.sh
#   DRY=1 bash benchmarks/gpu_suite.sh                # on a CPU: the same steps, tiny model and sizes (tests run it)
#
# On a machine without pip access run it from the tree (PYTHONPATH=.) with the embedded model's GGUF staged as
# ../shared/tools/gpu-stage-smollm2.sh explains; it needs torch, transformers, peft, papermill (smoke run) and gguf.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
OUT=${OUT:-gpu-suite}
DRY=${DRY:-0}
SMOKE=${SMOKE:-0}
mkdir -p "$OUT"
export PYTHONPATH="${PYTHONPATH:-}:$PWD"
GPUS=$($PY -c "import torch; print(torch.cuda.device_count())" 2>/dev/null || echo 0)
CARD=$($PY -c "import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no CUDA GPU')" 2>/dev/null)
echo "gpu_suite: $GPUS GPU(s): $CARD; dry run: $DRY; logs in $OUT"
declare -a ROWS
row() { ROWS+=("$1|$2|$3"); }
last() { grep -E "$2" "$1" | tail -n 1 | tr -s ' '; }
# run LABEL LOG LIMIT_S CMD...: the command under its own time limit; a failure is a table row, not an abort
run() {
  local label=$1 log=$2 limit=$3; shift 3
  local t0; t0=$(date +%s)
  timeout "$limit" "$@" > "$log" 2>&1
  local rc=$?
  [ $rc -eq 0 ] || row "$label" "FAILED (exit $rc$([ $rc -eq 124 ] && echo ", over ${limit} s")): $(tail -n 1 "$log" | cut -c1-120)" "$log"
  echo "  $label: exit $rc in $(( $(date +%s) - t0 )) s" >&2
  return $rc
}

if [ "$DRY" = 1 ]; then                 # tiny sizes on the CPU: checks the suite itself, measures nothing
  MODEL="--model tiny-random --device cpu"; PROMPTS=32; QUESTIONS=64; NAIVE=32; PLAN_PROMPTS=64
  SIZES="--sizes tiny,tiny-wide --device cpu --prompts 32 --questions 64 --samples 32"
  export MALLOC_MMAP_THRESHOLD_=65536 OMP_NUM_THREADS=1
else
  MODEL=""; PROMPTS=1024; QUESTIONS=16384; NAIVE=1024; PLAN_PROMPTS=2048
  SIZES=""                              # bench_sizes.py's defaults: 8B, 3B, 1B shapes
fi
# steps 1-4 at worst 75 + 2 x 90 + 2 x 65 + 60 = 445 s; step 5 takes the rest of SUITE_S (at least 30 s), measured
# from the suite's start, so the call stays under its 8 minutes; the sizes' rows are written as each finishes
LIMIT_PLAN=${LIMIT_PLAN:-75}; LIMIT_PROBE=${LIMIT_PROBE:-90}; LIMIT_EVAL=${LIMIT_EVAL:-65}; LIMIT_RESTORE=${LIMIT_RESTORE:-60}
LIMIT_SMOKE=${LIMIT_SMOKE:-150}
SUITE_S=${SUITE_S:-470}
START=$(date +%s)

if [ "$GPUS" -ge 1 ] || [ "$DRY" = 1 ]; then
  # 1. the plan against measured peaks
  if run "memory plan vs measured peak" "$OUT/plan_check.log" "$LIMIT_PLAN" \
      $PY benchmarks/plan_check.py $MODEL --prompts $PLAN_PROMPTS; then
    row "memory plan vs measured peak (probe, eval batches; batch_tokens auto)" "$(last "$OUT/plan_check.log" '^plan check')" \
        "$(grep -E '^(probe|eval) ' "$OUT/plan_check.log" | sed -E 's/ +/ /g; s/batch peak beside the weights: //' | paste -sd ';' -)"
  fi
  # 2. probe sampling with the stop rule on, dynamic then static + CUDA graphs
  for mode in dynamic static; do
    extra=$([ $mode = static ] && echo --static)
    log="$OUT/probe_$mode.log"
    if run "probe sampling ($mode)" "$log" "$LIMIT_PROBE" $PY benchmarks/bench_probe.py $MODEL --prompts $PROMPTS \
        --samples 10 --naive-batch $NAIVE --stop-rule $extra; then
      row "probe sampling, $PROMPTS prompts x 10, <= 32 tokens, stop rule on, $mode, budget auto" \
          "$(last "$log" 'speed-up')" "$(last "$log" 'naive model.generate') / $(last "$log" 'sftnb generate') / $(last "$log" 'sftnb first call')"
    fi
  done
  # 3. greedy evaluation with the stop rule on, dynamic then static + CUDA graphs
  for mode in dynamic static; do
    extra=$([ $mode = static ] && echo --static)
    log="$OUT/eval_$mode.log"
    if run "greedy evaluation ($mode)" "$log" "$LIMIT_EVAL" $PY benchmarks/bench_sft_eval.py $MODEL --skip-sft \
        --questions $QUESTIONS --naive-batch $(( NAIVE * 4 )) --skip-one-by-one --stop-rule $extra; then
      row "greedy evaluation, $QUESTIONS questions, <= 16 tokens, stop rule on, $mode" "$(last "$log" 'eval ratio')" \
          "$(last "$log" 'eval naive generate, batched +[0-9]') / $(last "$log" 'eval sftnb engine +[0-9]') / $(last "$log" "another model's first call")"
    fi
  done
  # 4. restoration on the device against the CPU path
  if run "restoration on the device vs the CPU" "$OUT/restore_check.log" "$LIMIT_RESTORE" \
      $PY benchmarks/restore_check.py $MODEL; then
    row "restoration, fine-tuned model on the device, pre-trained on the host (copy mode) vs the CPU (swap mode)" \
        "$(last "$OUT/restore_check.log" '^restore check')" "$(grep -E '^k = ' "$OUT/restore_check.log" | paste -sd ';' -)"
  fi
  # 5. throughput by model size, in whatever time is left
  left=$(( SUITE_S - ($(date +%s) - START) )); [ $left -ge 30 ] || left=30
  run "throughput by model size" "$OUT/sizes.log" "$left" $PY benchmarks/bench_sizes.py $SIZES \
      --out "$OUT/throughput_rows.json" --log "$OUT/sizes.log"
  n_rows=$(grep -c '^row: ' "$OUT/sizes.log")
  [ "$n_rows" -gt 0 ] && row "throughput by model size ($OUT/throughput_rows.json; merge: python benchmarks/bench_sizes.py --merge it)" \
      "$n_rows row(s) (time limit ${left} s)" "$(grep '^row: ' "$OUT/sizes.log" | sed -E 's/^row: //; s/ +/ /g' | paste -sd ';' -)"
else
  row "benchmarks" "skipped: no CUDA GPU (DRY=1 runs them tiny on the CPU)" "-"
fi

# 6. optional: smoke params end to end, and 2 ranks where there are 2 GPUs
if [ "$SMOKE" = 1 ]; then
  run "smoke params end to end" "$OUT/smoke.log" "$LIMIT_SMOKE" \
      $PY -m sftnb run params/smoke.yaml --out "$OUT/smoke-run" --force \
    && row "smoke params end to end (6 notebooks)" "ok" "$(last "$OUT/smoke.log" '^done in')"
fi
if [ "$GPUS" -ge 2 ] && [ "$SMOKE" = 1 ]; then
  run "smoke params, torchrun 2 ranks" "$OUT/two_ranks.log" "$LIMIT_SMOKE" \
      $PY -m torch.distributed.run --standalone --nproc_per_node 2 -m sftnb run params/smoke.yaml \
      --out "$OUT/smoke-2ranks" --force \
    && row "smoke params, torchrun 2 ranks" "ok" "$(last "$OUT/two_ranks.log" 'units done')"
fi

echo
echo "| check | result | detail |"
echo "| --- | --- | --- |"
for r in "${ROWS[@]}"; do IFS='|' read -r a b c <<< "$r"; echo "| $a | $b | $c |"; done
echo "(card: $CARD)"
