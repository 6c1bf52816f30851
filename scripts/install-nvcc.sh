#!/usr/bin/env bash
# Installs the pinned CUDA 13.0 nvcc (PyPI wheels) into the project-local, git-ignored folder .cuda/,
# without root. Idempotent: when the pinned versions are already there it only checks nvcc runs.
#
# Why 13.0: the lent GPUs run driver 580 (CUDA 13.0); a newer nvcc emits PTX that driver rejects.
# build.rs finds the result at .cuda/pip/nvidia/cu13/bin/nvcc.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
dest="$root/.cuda/pip"
stamp="$root/.cuda/installed.txt"
python=${PYTHON:-python3}

pins=(
  nvidia-cuda-nvcc==13.0.88
  nvidia-nvvm==13.0.88
  nvidia-cuda-crt==13.0.88
  nvidia-cuda-runtime==13.0.96
  nvidia-cuda-cccl==13.0.85
)
want="${pins[*]}"
nvcc="$dest/nvidia/cu13/bin/nvcc"

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$nvcc" ]; then
  echo "install-nvcc: already installed ($("$nvcc" --version | tail -n 2 | head -n 1))"
  exit 0
fi

if ! command -v "$python" >/dev/null 2>&1; then
  echo "install-nvcc: $python not found; install Python 3 with pip (apt-get install python3-pip) and run again" >&2
  exit 1
fi

rm -rf "$dest"
mkdir -p "$dest"
echo "install-nvcc: installing ${pins[*]} into $dest"
"$python" -m pip install --quiet --disable-pip-version-check --no-warn-script-location \
  --target "$dest" "${pins[@]}"

if [ ! -x "$nvcc" ]; then
  echo "install-nvcc: nvcc not found at $nvcc after install" >&2
  exit 1
fi
"$nvcc" --version | tail -n 2
echo "$want" > "$stamp"
