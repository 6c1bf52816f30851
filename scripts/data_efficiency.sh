#!/usr/bin/env bash
# The data-efficiency study of issue #9 in miniature: zero-shot top-1 on the 2000 held-out shapes images for
# clip, declip and cl2l trained on 5%, 20% and 100% of the 20000 training pairs, 3 seeds each; writes the runs to
# runs/data-efficiency/ and the table to docs/results.md.
#
#   bash scripts/data_efficiency.sh            # everything (27 runs + 10 diagnostics; ~2 h on 2 CPU cores)
#   OBJECTIVES="clip cl2l" SEEDS="0" bash scripts/data_efficiency.sh   # a subset (the table covers what exists)
#
# Every run has the same budget: STEPS optimiser steps of BATCH pairs (so a smaller subset is seen for more epochs),
# the tiny-ViT model, and the settings below; only --objective, --train-size and --seed change.
set -euo pipefail
cd "$(dirname "$0")/.."
OBJECTIVES=${OBJECTIVES:-"clip declip cl2l"}
FRACTIONS=${FRACTIONS:-"5 20 100"}
SEEDS=${SEEDS:-"0 1 2"}
STEPS=${STEPS:-300}
BATCH=${BATCH:-128}
OUT=${OUT:-runs/data-efficiency}
# Heads 1/8 of the papers' widths (ISS 128, CL2L local hidden 512) for a 128-wide model; DeCLIP's queue 4096 rows
# (65536 would hold mostly its random initial rows for the whole of a 300-step run).
COMMON=(--device cpu --steps "$STEPS" --batch-size "$BATCH" --eval-every 0 --no-progress --head-scale 0.125
  --queue-size 4096)
CLIPRT=${CLIPRT:-./target/release/cliprt}
[ -n "${CLIPRT_NO_BUILD:-}" ] || cargo build --release --quiet
mkdir -p "$OUT"
for objective in $OBJECTIVES; do
  for fraction in $FRACTIONS; do
    size=$((20000 * fraction / 100))
    for seed in $SEEDS; do
      dir="$OUT/$objective-$fraction-$seed"
      if [ -f "$dir/summary.json" ]; then
        echo "data_efficiency: $dir done already"
        continue
      fi
      rm -rf "$dir"
      echo "data_efficiency: $objective on $fraction% ($size pairs), seed $seed"
      "$CLIPRT" train --objective "$objective" --train-size "$size" --seed "$seed" --out "$dir" \
        "${COMMON[@]}" | tail -1
    done
  done
done
# Diagnostics (seed 0): which part of the multi-view recipes costs accuracy on this data. Each line: run name
# (objective[_variant]-augment-percent-seed), then the flags. DIAGNOSTICS=0 skips them.
DIAG=(
  "declip-geometric-20-0|--objective declip --augment geometric --train-size 4000"
  "declip_mvs-geometric-20-0|--objective declip --augment geometric --train-size 4000 --mvs-weight 1 --nns-weight 0 --iss-weight 0 --tss-weight 0"
  "declip-none-5-0|--objective declip --augment none --train-size 1000"
  "declip-none-20-0|--objective declip --augment none --train-size 4000"
  "declip-none-100-0|--objective declip --augment none --train-size 20000"
  "declip_mvs-none-20-0|--objective declip --augment none --train-size 4000 --mvs-weight 1 --nns-weight 0 --iss-weight 0 --tss-weight 0"
  "cl2l-geometric-20-0|--objective cl2l --augment geometric --train-size 4000"
  "cl2l-none-5-0|--objective cl2l --augment none --train-size 1000"
  "cl2l-none-20-0|--objective cl2l --augment none --train-size 4000"
  "cl2l-none-100-0|--objective cl2l --augment none --train-size 20000"
)
DIAG_OUT=${DIAG_OUT:-runs/diagnostics}
if [ "${DIAGNOSTICS:-1}" != 0 ]; then
  mkdir -p "$DIAG_OUT"
  for entry in "${DIAG[@]}"; do
    name=${entry%%|*}
    flags=${entry#*|}
    [ -f "$DIAG_OUT/$name/summary.json" ] && continue
    rm -rf "${DIAG_OUT:?}/$name"
    echo "data_efficiency: diagnostic $name"
    # shellcheck disable=SC2086
    "$CLIPRT" train $flags --seed 0 --out "$DIAG_OUT/$name" "${COMMON[@]}" | tail -1
  done
fi
python3 scripts/data_efficiency_table.py "$OUT" "STEPS=$STEPS BATCH=$BATCH, commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)" "$DIAG_OUT" > docs/results.md
echo "data_efficiency: wrote docs/results.md"
