#!/usr/bin/env bash
# Creates the Python environment for scripts/torch_reference.py (the PyTorch side of the side-by-side benchmarks):
# a virtualenv (default .venv-torch in the repository root, git-ignored; override with TORCH_VENV) holding pinned
# PyTorch and open_clip_torch from PyPI. Idempotent: when the pinned versions are already there it only checks
# that they import.
#
# PyTorch comes from PyPI's CPU wheel index (https://download.pytorch.org/whl/cpu: no CUDA libraries, a ~200 MB
# download); when that index cannot be reached it falls back to plain PyPI, whose Linux torch wheel bundles CUDA
# (several GB, runs on the CPU just the same). open_clip_torch and the rest come from PyPI.
#
#   bash scripts/torch-env.sh                      # then: .venv-torch/bin/python scripts/torch_reference.py --cpu
#   TORCH_VENV=/tmp/venv bash scripts/torch-env.sh
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
venv=${TORCH_VENV:-$root/.venv-torch}
python=${PYTHON:-python3}
cpu_index=https://download.pytorch.org/whl/cpu

torch_pins=(torch==2.15.0 torchvision==0.29.2)
other_pins=(open_clip_torch==3.3.0)
want="${torch_pins[*]} ${other_pins[*]}"
stamp="$venv/cliprt-torch-env.txt"
vpy="$venv/bin/python"

check() {
  "$vpy" - <<'EOF'
import torch, torchvision, open_clip
print(f"torch-env: torch {torch.__version__}, torchvision {torchvision.__version__}, "
      f"open_clip {open_clip.__version__}, {torch.get_num_threads()} CPU threads")
EOF
}

if [ -f "$stamp" ] && [ "$(head -n 1 "$stamp")" = "$want" ] && [ -x "$vpy" ]; then
  echo "torch-env: already installed in $venv ($(tail -n 1 "$stamp"))"
  check
  exit 0
fi

if ! command -v "$python" >/dev/null 2>&1; then
  echo "torch-env: $python not found; install Python 3 with venv and pip (apt-get install python3-venv) and run again" >&2
  exit 1
fi

if [ ! -x "$vpy" ]; then
  echo "torch-env: creating virtualenv $venv"
  "$python" -m venv "$venv"
fi
pip=("$vpy" -m pip install --disable-pip-version-check --no-warn-script-location --progress-bar off)

# Is the CPU wheel index reachable? (Python, not curl, so that nothing beyond Python is needed.)
if "$vpy" -c "import urllib.request, sys; urllib.request.urlopen(sys.argv[1] + '/torch/', timeout=20)" \
  "$cpu_index" >/dev/null 2>&1; then
  source_note="torch from $cpu_index"
  echo "torch-env: installing ${torch_pins[*]} from $cpu_index"
  "${pip[@]}" --index-url "$cpu_index" "${torch_pins[@]}"
else
  source_note="torch from PyPI (CPU index $cpu_index unreachable)"
  echo "torch-env: $cpu_index is unreachable; installing ${torch_pins[*]} from PyPI (CUDA-bundled wheel, large)"
  "${pip[@]}" "${torch_pins[@]}"
fi
echo "torch-env: installing ${other_pins[*]} from PyPI"
"${pip[@]}" "${torch_pins[@]}" "${other_pins[@]}"

check
printf '%s\n%s\n' "$want" "$source_note" > "$stamp"
