"""Turns runs/data-efficiency/<objective>-<percent>-<seed>/summary.json into docs/results.md (see
scripts/data_efficiency.sh)."""
import glob
import json
import os
import statistics
import sys

out, settings = sys.argv[1], sys.argv[2]
runs = {}
for path in sorted(glob.glob(os.path.join(out, "*", "summary.json"))):
    objective, percent, seed = os.path.basename(os.path.dirname(path)).rsplit("-", 2)
    s = json.load(open(path))
    runs.setdefault((objective, int(percent)), []).append((int(seed), s))

objectives = [o for o in ["clip", "declip", "cl2l", "siamlip", "byolip", "barlip", "swalip"]
              if any(k[0] == o for k in runs)]
percents = sorted({k[1] for k in runs})


def cell(values):
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.3f} (1 seed)"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


print("# Results\n")
print("## Data efficiency in miniature (issue #9)\n")
print("Zero-shot top-1 on the 2000 held-out shapes images (35 colour×shape classes, the embedded prompts), for models")
print("trained on 5%, 20% and 100% of the 20000 training pairs. Mean ± sample standard deviation over seeds 0, 1, 2")
print("(each seed changes the initialisation, the data order and the augmentations; the held-out split is fixed).\n")
print("| objective | " + " | ".join(f"{p}% ({20000 * p // 100} pairs)" for p in percents) + " |")
print("|---|" + "---|" * len(percents))
for o in objectives:
    cells = []
    for p in percents:
        vals = [s["zeroshot_top1"] for _, s in sorted(runs.get((o, p), []))]
        cells.append(cell(vals))
    print(f"| {o} | " + " | ".join(cells) + " |")
print()
print("Final training loss (mean over seeds; the objectives' losses are on different scales):\n")
print("| objective | " + " | ".join(f"{p}%" for p in percents) + " |")
print("|---|" + "---|" * len(percents))
for o in objectives:
    cells = []
    for p in percents:
        vals = [s["final_loss"] for _, s in runs.get((o, p), [])]
        cells.append(f"{statistics.mean(vals):.3f}" if vals else "—")
    print(f"| {o} | " + " | ".join(cells) + " |")
print()
any_run = next(iter(runs.values()))[0][1]
secs = {o: statistics.mean(s["train_seconds"] for k, v in runs.items() if k[0] == o for _, s in v) for o in objectives}
print("Setup: `bash scripts/data_efficiency.sh` (" + settings + "): tiny-ViT "
      f"({any_run['params']} CLIP parameters), batch {any_run['batch_size']}, {any_run['steps']} AdamW steps for every "
      "run whatever the subset size (smaller subsets are seen for more epochs), lr 1e-3 with 20 warm-up steps and a "
      "cosine decay, on the CPU (`--device cpu`). DeCLIP and CL2L use their heads at 1/8 of the papers' widths "
      "(`--head-scale 0.125`) and DeCLIP a 4096-row queue; everything else is each objective's default "
      "(SPEC §2–3). Training time per run, mean: " + ", ".join(f"{o} {secs[o]:.0f} s" for o in objectives) +
      f" ({any_run['device']}, {os.cpu_count()} cores).\n")
