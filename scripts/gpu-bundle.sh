#!/usr/bin/env bash
# Builds what a lent GPU machine runs (it has CUDA, PyTorch and cuDNN but no Rust) into the git-ignored folder
# bundle/: the release `cliprt` binary, the GPU test executable (tests/gpu/), the bench executables, and run.sh.
# Everything is stripped; the bundle must stay under 64 MiB (what the device tool carries).
#
#   bash scripts/gpu-bundle.sh            # then, with the device tool: carry ["bundle"], command "bash bundle/run.sh"
#
# run.sh (on the GPU machine) runs, each step under a timeout and logged: `cliprt doctor` WITHOUT LD_LIBRARY_PATH
# (cliprt must find libcuda, cuBLAS(Lt) and cuDNN by itself; only if it does not is LD_LIBRARY_PATH set from the
# nvidia/*/lib folders of the Python environment and the CUDA toolkit, and the report says so), the GPU tests
# (--test-threads=1), the GPU benches (gpu_gemm, gpu_backend), torch.matmul at the same GEMM shapes, the default
# `cliprt train --device cuda` (tiny-ViT, 300 steps; also in --precision fp32) and `cliprt eval` of its checkpoint,
# a ViT-B/32 batch-256 run (30 steps, MFU) and `cliprt bench train-step` at that size, and
# scripts/torch_reference.py if present; it writes report.md and raw logs under $OUT. PARTS selects groups (one
# device call has a 10-minute limit): e.g. PARTS="doctor tests" then PARTS="benches torch" then PARTS="train".
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
cp scripts/torch_backend_reference.py "$bundle/scripts/"
if [ -f scripts/torch_reference.py ]; then
  cp scripts/torch_reference.py "$bundle/scripts/"
fi
# The fused kernels' PyTorch baselines (sections of torch_reference.py, one file each).
mkdir -p "$bundle/scripts/torch_kernels"
cp scripts/torch_kernels/*.py "$bundle/scripts/torch_kernels/"

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
# Runs the bundle on a GPU machine and writes $OUT/report.md and $OUT/logs/*. Every step runs under a timeout (a
# failing step is recorded, not fatal); the exit status is that of the GPU tests (0 when they did not run).
#
# Environment:
#   OUT           where everything goes (default: bundle/out)
#   PARTS         which groups run, space-separated (default: all): doctor tests benches torch kernels train
#                 reference   (kernels: `cliprt bench clip-loss|nn-queue|attention` and their PyTorch sections)
#                 (doctor always runs first: the library check decides LD_LIBRARY_PATH)
#   TEST_ARGS     extra libtest arguments for the GPU tests (e.g. a name filter)
#   BENCHES       "all", or space-separated bench names (default: the GPU ones: gpu_*, clip_loss, nn_queue,
#                 attention)
#   BENCH_ARGS    extra criterion arguments
#   STEP_TIMEOUT  seconds per step (default 300)
#   TRAIN_STEPS   steps of the ViT-B/32 run (default 30)
set -uo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
OUT=${OUT:-$here/out}
logs="$OUT/logs"
mkdir -p "$logs"
timeout_s=${STEP_TIMEOUT:-300}
parts=" ${PARTS:-doctor tests benches torch kernels train reference} "
want() { [[ "$parts" == *" $1 "* ]]; }
cliprt="$here/bin/cliprt"
runs=${TMPDIR:-/tmp}/cliprt-bundle-runs
rm -rf "$runs"
mkdir -p "$runs"
export CRITERION_HOME="$OUT/criterion"

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

# 1. Library discovery, with the environment as the machine gives it: no LD_LIBRARY_PATH of ours.
orig_ld=${LD_LIBRARY_PATH:-}
step "cliprt doctor (no LD_LIBRARY_PATH of ours)" "$logs/doctor.txt" "$cliprt" doctor
step "cliprt doctor --json" "$logs/doctor.json" "$cliprt" doctor --json
missing=$(python3 -c '
import json, sys
try:
    d = json.load(open(sys.argv[1]))
except Exception:
    print("doctor --json unreadable"); sys.exit()
print(" ".join(l["name"] for l in d.get("library_list", []) if not l["found"]))
' "$logs/doctor.json" 2>/dev/null)
ld_note="cliprt found every library by itself; LD_LIBRARY_PATH left as the machine set it (${orig_ld:-unset})"
libdirs=()
site=$(python3 -c "import nvidia, os; print(os.path.dirname(list(nvidia.__path__)[0]))" 2>/dev/null || true)
if [ -n "$missing" ]; then
  # Fallback, so the rest of the run still tests the kernels: the nvidia/*/lib folders and the CUDA toolkit.
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
  ld_note="NOT FOUND by cliprt itself: $missing; LD_LIBRARY_PATH set for the rest of the run: ${LD_LIBRARY_PATH:-unset}"
  step "cliprt doctor (with LD_LIBRARY_PATH)" "$logs/doctor-ld.txt" "$cliprt" doctor
fi

{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "host: $(uname -srm), $(nproc) cores"
  echo "python site-packages: ${site:-none}"
  echo "libraries: $ld_note"
  echo
  nvidia-smi 2>&1 || echo "nvidia-smi: not available"
  echo
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version())" 2>&1 || true
  echo
  if [ -n "$site" ]; then
    ls -d "$site"/nvidia/*/lib 2>/dev/null | while read -r d; do
      ls "$d" 2>/dev/null | grep -E '^lib(cublas|cublasLt|cudnn|nvrtc|cudart)' | sed "s|^|$d/|"
    done
  fi
} > "$logs/environment.txt" 2>&1

test_rc=0
if want tests; then
  # shellcheck disable=SC2086
  step "GPU tests" "$logs/gpu-tests.txt" "$here/tests/gpu" --test-threads=1 --nocapture ${TEST_ARGS:-}
  test_rc=$?
fi

if want benches; then
  for bench in "$here"/benches/*; do
    [ -f "$bench" ] || continue
    name=$(basename "$bench")
    case "${BENCHES:-}" in
      all) ;;
      "") [[ "$name" == *gpu* || " clip_loss nn_queue attention " == *" $name "* ]] || continue ;;
      *) [[ " $BENCHES " == *" $name "* ]] || continue ;;
    esac
    # shellcheck disable=SC2086
    step "bench $name" "$logs/bench-$name.txt" "$bench" --bench ${BENCH_ARGS:-}
  done
fi

if want torch; then
  # torch.matmul at the GEMM shapes of gpu_gemm (bf16, fp32 accumulation), in this same run: the issue's "at least
  # the rate of torch.matmul" compares gpu_gemm's lines with these.
  cat > "$runs/torch_gemm.py" <<'PY'
import time
import torch

LAYERS = [("vit qkv", 12800, 768, 2304), ("vit out", 12800, 768, 768), ("vit fc1", 12800, 768, 3072),
          ("vit fc2", 12800, 3072, 768), ("text qkv", 19712, 512, 1536), ("text out", 19712, 512, 512),
          ("text fc1", 19712, 512, 2048), ("text fc2", 19712, 2048, 512)]
torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = False
dev = torch.device("cuda")
print("device:", torch.cuda.get_device_name(0), "torch", torch.__version__)

def rate(fn, flops, iters=20):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(iters):
        fn()
    torch.cuda.synchronize()
    return flops * iters / (time.perf_counter() - t) / 1e12

for name, m, k, n in LAYERS:
    x = torch.randn(m, k, device=dev, dtype=torch.bfloat16)
    w = torch.randn(n, k, device=dev, dtype=torch.bfloat16)
    dy = torch.randn(m, n, device=dev, dtype=torch.bfloat16)
    dw = torch.zeros(n, k, device=dev, dtype=torch.float32)
    f = 2.0 * m * n * k
    fwd = rate(lambda: torch.matmul(x, w.t()), f)
    dx = rate(lambda: torch.matmul(dy, w), f)
    # dW += dYᵀ·X into fp32 (what cliprt's gemm_to_master does): bf16 GEMM, then the fp32 accumulate, as torch
    # autograd does for fp32 master weights under autocast.
    dwr = rate(lambda: dw.add_(torch.matmul(dy.t(), x)), f)
    print(f"torch {name:<9} M{m} K{k} N{n}  fwd {fwd:7.1f}  dX {dx:7.1f}  dW(+=, fp32) {dwr:7.1f} TFLOP/s")
PY
  step "torch.matmul GEMM shapes" "$logs/torch-gemm.txt" python3 "$runs/torch_gemm.py"
  # PyTorch's LayerNorm, softmax and fused AdamW against its own copy bandwidth (and its GEMMs, CUDA-event timed),
  # the baseline of gpu_backend's lines.
  step "torch primitives (copy, LayerNorm, softmax, AdamW, GEMM)" "$logs/torch-backend.txt" \
    python3 "$here/scripts/torch_backend_reference.py"
fi

if want kernels; then
  # The fused kernels of issues #6-#8 against their floors and baselines, then PyTorch at the same shapes.
  for kernel in clip-loss nn-queue attention; do
    step "cliprt bench $kernel" "$logs/cli-bench-$kernel.txt" "$cliprt" bench "$kernel"
    step "torch $kernel" "$logs/torch-$kernel.txt" python3 "$here/scripts/torch_reference.py" "$kernel"
  done
fi

if want train; then
  # The default run on the GPU: tiny-ViT, 300 steps, batch 256, bf16 with fp32 master weights.
  step "cliprt train --device cuda (default, bf16)" "$logs/train-default.txt" \
    "$cliprt" train --device cuda --no-progress --out "$runs/default"
  # The same in the fp32 parity mode: the loss curve and accuracy should match the bf16 run closely.
  step "cliprt train --device cuda --precision fp32" "$logs/train-default-fp32.txt" \
    "$cliprt" train --device cuda --precision fp32 --no-progress --out "$runs/default-fp32"
  if [ -f "$runs/default/last.safetensors" ]; then
    step "cliprt eval --device cuda (default run)" "$logs/eval-default.txt" \
      "$cliprt" eval --device cuda --checkpoint "$runs/default/last.safetensors" --held-out-size 2000
  fi
  # ViT-B/32 at batch 256 on the shapes set drawn at 224 px: throughput and MFU (not accuracy: 30 steps).
  step "cliprt train ViT-B-32 batch 256 (${TRAIN_STEPS:-30} steps)" "$logs/train-vit-b-32.txt" \
    "$cliprt" train --device cuda --model ViT-B-32 --batch-size 256 --steps "${TRAIN_STEPS:-30}" --warmup 5 \
    --eval-every 0 --held-out-size 512 --no-progress --out "$runs/vit-b-32"
  step "cliprt bench train-step ViT-B-32 batch 256" "$logs/bench-train-step-vit-b-32.txt" \
    "$cliprt" bench train-step --device cuda --model ViT-B-32 --batch 256 --warmup 3 --steps 10
  step "cliprt bench train-step tiny-ViT batch 256" "$logs/bench-train-step-tiny-vit.txt" \
    "$cliprt" bench train-step --device cuda --batch 256 --warmup 3 --steps 20
  # Small files only (checkpoints stay behind: ViT-B/32's are 2.4 GB).
  for run in default default-fp32 vit-b-32; do
    if [ -d "$runs/$run" ]; then
      mkdir -p "$OUT/train-$run"
      for f in summary.json log.jsonl curves.png model_config.json; do
        [ -f "$runs/$run/$f" ] && cp "$runs/$run/$f" "$OUT/train-$run/"
      done
    fi
  done
fi

if want reference; then
  torch_ref=""
  if [ -f "$repo/scripts/torch_reference.py" ]; then
    torch_ref="$repo/scripts/torch_reference.py"
  elif [ -f "$here/scripts/torch_reference.py" ]; then
    torch_ref="$here/scripts/torch_reference.py"
  fi
  if [ -n "$torch_ref" ]; then
    step "torch_reference.py" "$logs/torch_reference.txt" python3 "$torch_ref"
  fi
fi

# The figures of a train run's summary.json, one line.
summary_line() {
  python3 -c '
import json, sys
s = json.load(open(sys.argv[1]))
def g(k, f="{}"):
    v = s.get(k)
    return "-" if v is None else f.format(v)
def pct(k):
    v = s.get(k)
    return "-" if v is None else "{:.1f}%".format(100 * v)
gemm = "-" if s.get("median_of_gemm") is None else "{} of {:.0f}".format(pct("median_of_gemm"), s["gemm_tflops"])
mem = s.get("peak_device_memory_bytes")
print(" | ".join([
    g("model"), " ".join([g("device"), g("precision"), g("gpu")]), g("batch_size"), g("steps"),
    g("samples_per_s", "{:.0f}"), g("median_samples_per_s", "{:.0f}"), pct("mfu"), pct("median_mfu"), gemm,
    g("peak_tflops"), "-" if mem is None else "{:.2f}".format(mem / 2**30),
    g("final_loss", "{:.4f}"), g("zeroshot_top1", "{:.3f}"),
]))
' "$1" 2>/dev/null || echo "unreadable summary"
}

{
  echo "# GPU run report"
  echo
  echo "- bundle: $(sed -n 1p "$here/manifest.txt" 2>/dev/null)"
  echo "- date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "- GPU: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -n 1)"
  echo "- parts: ${parts}"
  echo "- libraries: $ld_note"
  echo
  echo "| step | exit | seconds | log |"
  echo "|---|---|---|---|"
  for s in "${steps[@]}"; do
    IFS='|' read -r name rc secs log <<< "$s"
    echo "| $name | $rc | $secs | logs/$log |"
  done
  echo
  echo "## cliprt doctor (no LD_LIBRARY_PATH of ours)"
  echo
  echo '```'
  cat "$logs/doctor.txt"
  echo '```'
  if [ -f "$logs/gpu-tests.txt" ]; then
    echo
    echo "## GPU tests"
    echo
    skipped=$(grep -c "skipped: no CUDA device" "$logs/gpu-tests.txt")
    echo "Tests that skipped themselves (no device): $skipped. $(grep -E '^test result' "$logs/gpu-tests.txt" | tail -n 1)"
    echo
    echo '```'
    grep -E '^test |^test result|panicked|skipped' "$logs/gpu-tests.txt" | head -n 300
    echo '```'
  fi
  for f in "$logs"/bench-gpu*.txt; do
    [ -f "$f" ] || continue
    echo
    echo "## $(basename "$f" .txt)"
    echo
    echo '```'
    # Our own table lines and summaries first, then criterion's.
    grep -E '^(device|copy|summary|backend memory|skipped)|GB/s|TFLOP/s' "$f" | grep -v 'thrpt' | head -n 120
    echo
    grep -E 'time:|thrpt:' "$f" | head -n 120
    echo '```'
  done
  # The fused kernels (issues #6-#8): criterion groups, `cliprt bench <kernel>` tables and PyTorch's, as printed.
  for name in clip-loss nn-queue attention; do
    for f in "$logs/bench-${name//-/_}.txt" "$logs/cli-bench-$name.txt" "$logs/torch-$name.txt"; do
      [ -f "$f" ] || continue
      echo
      echo "## $(basename "$f" .txt)"
      echo
      echo '```'
      grep -v -E '^(Benchmarking|Gnuplot|Warning)' "$f" | head -n 150
      echo '```'
    done
  done
  if [ -f "$logs/torch-gemm.txt" ]; then
    echo
    echo "## torch.matmul at the same GEMM shapes"
    echo
    echo '```'
    cat "$logs/torch-gemm.txt"
    echo '```'
  fi
  if compgen -G "$logs/train-*.txt" > /dev/null; then
    echo
    echo "## cliprt train on the GPU"
    echo
    echo "| model | device | batch | steps | samples/s | median samples/s | MFU | median MFU | median of GEMM (TFLOP/s) | peak TFLOP/s | peak memory GiB | final loss | zero-shot top-1 |"
    echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    for run in default default-fp32 vit-b-32; do
      [ -f "$OUT/train-$run/summary.json" ] && echo "| $(summary_line "$OUT/train-$run/summary.json") |"
    done
    for f in "$logs"/train-*.txt "$logs"/eval-default.txt "$logs"/bench-train-step-*.txt; do
      [ -f "$f" ] || continue
      echo
      echo "### $(basename "$f" .txt)"
      echo
      echo '```'
      if [ "$(wc -l < "$f")" -le 16 ]; then
        cat "$f"
      else
        head -n 8 "$f"
        echo "…"
        tail -n 6 "$f"
      fi
      echo '```'
    done
  fi
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
