#!/usr/bin/env bash
# One GPU check in one call of at most 8 minutes (issue 23): on whatever GPUs this machine has, run
#   1. the memory plan against measured peaks, on the dynamic KV cache, whose batches the plan's formula sizes
#      (benchmarks/plan_check.py, SFTNB_STATIC_DECODE=0: probe and evaluation batches, the
#      package's own budget, run.batch_tokens auto, vs torch.cuda.max_memory_allocated);
#   2. probe sampling, stop rule on, against model.generate: the dynamic engine, then its static KV cache +
#      CUDA graphs path (benchmarks/bench_probe.py);
#   3. greedy evaluation, stop rule on, against batched model.generate: dynamic, then static
#      (benchmarks/bench_sft_eval.py --skip-sft), and what another model's first call costs;
#   4. restoration as a GPU run does it (the fine-tuned model on the GPU, the pre-trained weights on the host)
#      against the CPU path, bit for bit (benchmarks/restore_check.py);
#   5. every unit of params/smoke.yaml (probe, full / mixed / LoRA SFT, evaluations, token KL, restoration) computed
#      on the GPU, without the notebooks (benchmarks/units_check.py; no papermill needed); with 2 GPUs or more,
#      also as 2 torchrun ranks;
#   6. throughput by model size for `sftnb plan`'s time estimate: randomly initialised LLaMA-3-8B, 3.2-3B and
#      3.2-1B shapes in the probe, evaluation and SFT settings (benchmarks/bench_sizes.py), rows written to
#      $OUT/throughput_rows.json as each is measured, in the form of sftnb/resources/throughput.json;
# and print one table at the end, ratios and throughput rows included. Everything goes under $OUT (default
# ./gpu-suite), logs included. Each step runs under its own time limit (LIMIT_* seconds) and never past the
# suite's deadline (SUITE_S, 470 s from its start), so one hang cannot eat the call; step 6 takes what is left.
# STEPS picks steps (default: all of plan,probe,eval,restore,units,sizes).
#
#   bash benchmarks/gpu_suite.sh                      # from the repository root, the package on PYTHONPATH or installed
#   OUT=/tmp/suite PY=python3 bash benchmarks/gpu_suite.sh
#   STEPS=units,sizes SUITE_S=300 bash benchmarks/gpu_suite.sh       # some steps only
#   DRY=1 bash benchmarks/gpu_suite.sh                # on a CPU: the same steps, tiny models and sizes (tests run it)
#
# On a machine without pip access run it from the tree (PYTHONPATH=.) with the embedded model's GGUF staged as
# ../shared/tools/gpu-stage-smollm2.sh explains; it needs torch, transformers, peft and gguf.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
OUT=${OUT:-gpu-suite}
DRY=${DRY:-0}
STEPS=${STEPS:-plan,probe,eval,restore,units,sizes}
SUITE_S=${SUITE_S:-470}
START=$(date +%s)
mkdir -p "$OUT"
export PYTHONPATH="${PYTHONPATH:-}:$PWD"
GPUS=$($PY -c "import torch; print(torch.cuda.device_count())" 2>/dev/null || echo 0)
CARD=$($PY -c "import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no CUDA GPU')" 2>/dev/null)
echo "gpu_suite: $GPUS GPU(s): $CARD; dry run: $DRY; steps: $STEPS; logs in $OUT"
declare -a ROWS
row() { ROWS+=("$1|$2|$3"); }
last() { grep -E "$2" "$1" | tail -n 1 | tr -s ' '; }
want() { [[ ",$STEPS," == *",$1,"* ]]; }
left() { echo $(( SUITE_S - ($(date +%s) - START) )); }
# run LABEL LOG LIMIT_S CMD...: the command under min(its limit, the time left); a failure is a table row, not an abort
run() {
  local label=$1 log=$2 limit=$3; shift 3
  local rest; rest=$(left)
  [ "$rest" -lt "$limit" ] && limit=$rest
  if [ "$limit" -lt 10 ]; then
    row "$label" "SKIPPED: the suite's $SUITE_S s are spent" "-"
    return 1
  fi
  local t0; t0=$(date +%s)
  timeout "$limit" "$@" > "$log" 2>&1
  local rc=$?
  [ $rc -eq 0 ] || row "$label" "FAILED (exit $rc$([ $rc -eq 124 ] && echo ", over ${limit} s")): $(tail -n 1 "$log" | cut -c1-120)" "$log"
  echo "  $label: exit $rc in $(( $(date +%s) - t0 )) s" >&2
  return $rc
}

if [ "$DRY" = 1 ]; then                 # tiny sizes on the CPU: checks the suite itself, measures nothing
  MODEL="--model tiny-random --device cpu"; PROMPTS=32; QUESTIONS=64; NAIVE=32; PLAN_PROMPTS=64; DEVICE=cpu
  SIZES="--sizes tiny,tiny-wide --device cpu --prompts 32 --questions 64 --samples 32"
  export MALLOC_MMAP_THRESHOLD_=65536 OMP_NUM_THREADS=1
else
  MODEL=""; PROMPTS=1024; QUESTIONS=16384; NAIVE=1024; PLAN_PROMPTS=2048; DEVICE=cuda
  SIZES=""                              # bench_sizes.py's defaults: 8B, 3B, 1B shapes
fi
# hang guards, each well above what the step should take; the deadline caps them all
LIMIT_PLAN=${LIMIT_PLAN:-75}; LIMIT_PROBE=${LIMIT_PROBE:-90}; LIMIT_EVAL=${LIMIT_EVAL:-110}
LIMIT_RESTORE=${LIMIT_RESTORE:-60}; LIMIT_UNITS=${LIMIT_UNITS:-120}

if [ "$GPUS" -lt 1 ] && [ "$DRY" != 1 ]; then
  row "benchmarks" "skipped: no CUDA GPU (DRY=1 runs them tiny on the CPU)" "-"
  STEPS=""
fi

# 1. the plan against measured peaks
if want plan && run "memory plan vs measured peak" "$OUT/plan_check.log" "$LIMIT_PLAN" \
    env SFTNB_STATIC_DECODE=0 $PY benchmarks/plan_check.py $MODEL --prompts $PLAN_PROMPTS; then
  row "memory plan vs measured peak (probe, eval batches; batch_tokens auto)" "$(last "$OUT/plan_check.log" '^plan check')" \
      "$(grep -E '^(probe|eval) ' "$OUT/plan_check.log" | sed -E 's/ +/ /g; s/batch peak beside the weights: //' | paste -sd ';' -)"
fi
# 2. probe sampling with the stop rule on, dynamic then static + CUDA graphs
for mode in dynamic static; do
  want probe || break
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
  want eval || break
  extra=$([ $mode = static ] && echo --static)
  log="$OUT/eval_$mode.log"
  if run "greedy evaluation ($mode)" "$log" "$LIMIT_EVAL" $PY benchmarks/bench_sft_eval.py $MODEL --skip-sft \
      --questions $QUESTIONS --naive-batch $(( NAIVE * 4 )) --skip-one-by-one --stop-rule $extra; then
    row "greedy evaluation, $QUESTIONS questions, <= 16 tokens, stop rule on, $mode" "$(last "$log" 'eval ratio')" \
        "$(last "$log" 'eval naive generate, batched +[0-9]') / $(last "$log" 'eval sftnb engine +[0-9]') / $(last "$log" "another model's first call")"
  fi
done
# 4. restoration on the device against the CPU path
if want restore && run "restoration on the device vs the CPU" "$OUT/restore_check.log" "$LIMIT_RESTORE" \
    $PY benchmarks/restore_check.py $MODEL; then
  row "restoration, fine-tuned model on the device, pre-trained on the host (copy mode) vs the CPU (swap mode)" \
      "$(last "$OUT/restore_check.log" '^restore check')" "$(grep -E '^k = ' "$OUT/restore_check.log" | paste -sd ';' -)"
fi
# 5. every unit of the smoke params on the device (and as 2 ranks where there are 2 GPUs)
if want units && run "smoke params' units on $DEVICE" "$OUT/units.log" "$LIMIT_UNITS" \
    $PY benchmarks/units_check.py params/smoke.yaml --device $DEVICE --out "$OUT/units-$DEVICE"; then
  row "every unit of params/smoke.yaml on $DEVICE (no notebooks)" "$(last "$OUT/units.log" '^units check')" \
      "$(last "$OUT/units.log" 'computed [0-9]+ unit')"
fi
if want units && [ "$GPUS" -ge 2 ] && run "smoke params' units, torchrun 2 ranks" "$OUT/units_2ranks.log" "$LIMIT_UNITS" \
    $PY -m torch.distributed.run --standalone --nproc_per_node 2 benchmarks/units_check.py params/smoke.yaml \
    --device cuda --out "$OUT/units-2ranks"; then
  row "every unit of params/smoke.yaml, torchrun 2 ranks" "$(last "$OUT/units_2ranks.log" '^units check')" \
      "$(last "$OUT/units_2ranks.log" 'computed [0-9]+ unit')"
fi
# 6. throughput by model size, in whatever time is left
if want sizes; then
  run "throughput by model size" "$OUT/sizes.log" "$(left)" $PY benchmarks/bench_sizes.py $SIZES \
      --out "$OUT/throughput_rows.json" --log "$OUT/sizes.log"
  n_rows=$(grep -c '^row: ' "$OUT/sizes.log" 2>/dev/null)
  [ "${n_rows:-0}" -gt 0 ] && row "throughput by model size ($OUT/throughput_rows.json; merge: python benchmarks/bench_sizes.py --merge it)" \
      "$n_rows row(s)" "$(grep '^row: ' "$OUT/sizes.log" | sed -E 's/^row: //; s/ +/ /g' | paste -sd ';' -)"
fi

echo
echo "| check | result | detail |"
echo "| --- | --- | --- |"
for r in "${ROWS[@]}"; do IFS='|' read -r a b c <<< "$r"; echo "| $a | $b | $c |"; done
echo "(card: $CARD; $(( $(date +%s) - START )) s)"
