#!/usr/bin/env bash
# Builds what a lent GPU machine runs (it has CUDA, PyTorch and cuDNN but no Rust) into the git-ignored folder
# bundle/: the release `cliprt` binary, the GPU test executable (tests/gpu/), the bench executables, and run.sh.
# Everything is stripped; the bundle must stay under 64 MiB (what the device tool carries).
#
#   bash scripts/gpu-bundle.sh            # then, with the device tool: carry ["bundle"], command "bash bundle/run.sh"
#
# run.sh (on the GPU machine) sets LD_LIBRARY_PATH from the nvidia/*/lib folders of the Python environment holding
# PyTorch and /usr/local/cuda/lib64, then runs `cliprt doctor` (text and --json), the GPU tests (--test-threads=1),
# the GPU benches (executables named *gpu*, or all with BENCHES=all), and scripts/torch_reference.py if present,
# writing report.md and raw logs under $OUT.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
bundle="$root/bundle"
limit=$((64 * 1024 * 1024))

if [ ! -x .cuda/pip/nvidia/cu13/bin/nvcc ] && [ -z "${NVCC:-}" ] && ! command -v nvcc >/dev/null 2>&1; then
  echo "gpu-bundle: no nvcc: run scripts/install-nvcc.sh first (a bundle without kernels tests nothing)" >&2
  exit 1
fi

rm -rf "$bundle"
mkdir -p "$bundle/bin" "$bundle/tests" "$bundle/benches" "$bundle/scripts"

echo "gpu-bundle: building the release binary"
cargo build --release --bin cliprt
cp target/release/cliprt "$bundle/bin/cliprt"

# The executables cargo reports building, by target kind and name: "kind name path" per line.
artifacts() {
  python3 -c '
import json, sys
for line in sys.stdin:
    line = line.strip()
    if not line.startswith("{"):
        continue
    msg = json.loads(line)
    if msg.get("reason") != "compiler-artifact" or not msg.get("executable"):
        continue
    target = msg["target"]
    for kind in target["kind"]:
        print(kind, target["name"], msg["executable"])
'
}

echo "gpu-bundle: building the GPU test executable"
tests=$(cargo test --release --no-run --test gpu --message-format=json | artifacts)
gpu_test=$(printf '%s\n' "$tests" | awk '$1 == "test" && $2 == "gpu" { print $3 }' | tail -n 1)
if [ -z "$gpu_test" ]; then
  echo "gpu-bundle: cargo did not report the tests/gpu/ executable" >&2
  exit 1
fi
cp "$gpu_test" "$bundle/tests/gpu"

echo "gpu-bundle: building the bench executables"
benches=$(cargo bench --no-run --message-format=json | artifacts)
printf '%s\n' "$benches" | awk '$1 == "bench" { print $2, $3 }' | while read -r name exe; do
  cp "$exe" "$bundle/benches/$name"
done

for f in "$bundle"/bin/* "$bundle"/tests/* "$bundle"/benches/*; do
  [ -f "$f" ] && strip "$f"
done
if [ -f scripts/torch_reference.py ]; then
  cp scripts/torch_reference.py "$bundle/scripts/"
fi

# Which source this is (read from .git without running git).
commit=unknown
if [ -f .git/HEAD ]; then
  head=$(cat .git/HEAD)
  case "$head" in
    "ref: "*)
      ref=${head#ref: }
      if [ -f ".git/$ref" ]; then
        commit=$(cat ".git/$ref")
      elif [ -f .git/packed-refs ]; then
        commit=$(awk -v r="$ref" '$2 == r { print $1 }' .git/packed-refs)
      fi
      ;;
    *) commit=$head ;;
  esac
fi
{
  echo "commit: ${commit:-unknown} (plus any uncommitted changes)"
  echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(uname -srm)"
  echo "nvcc: $(./bundle/bin/cliprt doctor --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["nvcc_version"])')"
  echo "files:"
  (cd "$bundle" && find . -type f ! -name manifest.txt | sort | while read -r f; do echo "  $f $(stat -c %s "$f")"; done)
} > "$bundle/manifest.txt"

cat > "$bundle/run.sh" <<'RUN'
#!/usr/bin/env bash
# Runs the bundle on a GPU machine: doctor, GPU tests, GPU benches, torch reference. Writes $OUT/report.md and
# $OUT/logs/*. Every step runs (a failing step is recorded, not fatal); the exit status is that of the GPU tests.
#
# Environment: OUT (default: bundle/out), TEST_ARGS (extra libtest arguments, e.g. a name filter),
# BENCHES ("all", or space-separated bench names; default: those whose name contains "gpu"), BENCH_ARGS (extra
# criterion arguments), STEP_TIMEOUT (seconds per step, default 300).
set -uo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
OUT=${OUT:-$here/out}
logs="$OUT/logs"
mkdir -p "$logs"
timeout_s=${STEP_TIMEOUT:-300}

# cuBLAS/cuDNN: the nvidia/*/lib folders of the Python environment that holds PyTorch, then the CUDA toolkit.
libdirs=()
site=$(python3 -c "import nvidia, os; print(os.path.dirname(list(nvidia.__path__)[0]))" 2>/dev/null || true)
if [ -n "$site" ]; then
  for d in "$site"/nvidia/*/lib; do
    [ -d "$d" ] && libdirs+=("$d")
  done
fi
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
  [ -d "$d" ] && libdirs+=("$d")
done
if [ ${#libdirs[@]} -gt 0 ]; then
  joined=$(IFS=:; echo "${libdirs[*]}")
  export LD_LIBRARY_PATH="$joined${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
export CRITERION_HOME="$OUT/criterion"

{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "host: $(uname -srm)"
  echo "python site-packages: ${site:-none}"
  echo "LD_LIBRARY_PATH: ${LD_LIBRARY_PATH:-}"
  echo
  nvidia-smi 2>&1 || echo "nvidia-smi: not available"
  echo
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version())" 2>&1 || true
  echo
  for d in "${libdirs[@]}"; do
    ls "$d" 2>/dev/null | grep -E '^lib(cublas|cublasLt|cudnn|nvrtc|cudart)' | sed "s|^|$d/|"
  done
} > "$logs/environment.txt" 2>&1

steps=()
# step NAME LOGFILE COMMAND...: runs with a timeout, records status and seconds.
step() {
  local name=$1 log=$2
  shift 2
  local start end rc
  start=$(date +%s.%N)
  timeout "$timeout_s" "$@" > "$log" 2>&1
  rc=$?
  end=$(date +%s.%N)
  steps+=("$name|$rc|$(python3 -c "print(f'{$end - $start:.1f}')")|$(basename "$log")")
  echo "run.sh: $name -> exit $rc"
  return $rc
}

step "cliprt doctor" "$logs/doctor.txt" "$here/bin/cliprt" doctor
step "cliprt doctor --json" "$logs/doctor.json" "$here/bin/cliprt" doctor --json
# shellcheck disable=SC2086
step "GPU tests" "$logs/gpu-tests.txt" "$here/tests/gpu" --test-threads=1 --nocapture ${TEST_ARGS:-}
test_rc=$?

for bench in "$here"/benches/*; do
  [ -f "$bench" ] || continue
  name=$(basename "$bench")
  case "${BENCHES:-}" in
    all) ;;
    "") [[ "$name" == *gpu* ]] || continue ;;
    *) [[ " $BENCHES " == *" $name "* ]] || continue ;;
  esac
  # shellcheck disable=SC2086
  step "bench $name" "$logs/bench-$name.txt" "$bench" --bench ${BENCH_ARGS:-}
done

torch_ref=""
if [ -f "$repo/scripts/torch_reference.py" ]; then
  torch_ref="$repo/scripts/torch_reference.py"
elif [ -f "$here/scripts/torch_reference.py" ]; then
  torch_ref="$here/scripts/torch_reference.py"
fi
if [ -n "$torch_ref" ]; then
  step "torch_reference.py" "$logs/torch_reference.txt" python3 "$torch_ref"
fi

{
  echo "# GPU run report"
  echo
  echo "- bundle: $(sed -n 1p "$here/manifest.txt" 2>/dev/null)"
  echo "- date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "- GPU: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -n 1)"
  echo
  echo "| step | exit | seconds | log |"
  echo "|---|---|---|---|"
  for s in "${steps[@]}"; do
    IFS='|' read -r name rc secs log <<< "$s"
    echo "| $name | $rc | $secs | logs/$log |"
  done
  echo
  echo "## cliprt doctor"
  echo
  echo '```'
  cat "$logs/doctor.txt"
  echo '```'
  echo
  echo "## GPU tests"
  echo
  skipped=$(grep -c "skipped: no CUDA device" "$logs/gpu-tests.txt")
  echo "Tests that skipped themselves (no device): $skipped. $(grep -E '^test result' "$logs/gpu-tests.txt" | tail -n 1)"
  echo
  echo '```'
  grep -E '^test |^test result|panicked|skipped' "$logs/gpu-tests.txt" | head -n 200
  echo '```'
  for f in "$logs"/bench-*.txt; do
    [ -f "$f" ] || continue
    echo
    echo "## $(basename "$f" .txt)"
    echo
    echo '```'
    grep -E 'time:|thrpt:|^[A-Za-z0-9_/.-]+ *$' "$f" | head -n 200
    echo '```'
  done
  if [ -f "$logs/torch_reference.txt" ]; then
    echo
    echo "## torch_reference.py"
    echo
    echo '```'
    tail -n 100 "$logs/torch_reference.txt"
    echo '```'
  fi
} > "$OUT/report.md"

echo "run.sh: report at $OUT/report.md"
exit $test_rc
RUN
chmod +x "$bundle/run.sh"

size=$(du -sb "$bundle" | cut -f1)
echo "gpu-bundle: bundle/ is $((size / 1024)) KiB ($size bytes):"
(cd "$bundle" && find . -type f | sort | xargs ls -la | awk '{ printf "  %10d  %s\n", $5, $9 }')
if [ "$size" -ge "$limit" ]; then
  echo "gpu-bundle: bundle/ is over 64 MiB; the device tool will not carry it" >&2
  exit 1
fi
