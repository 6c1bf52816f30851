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
clip_runs = [s for k, v in runs.items() if k[0] == "clip" for _, s in v]
any_run = clip_runs[0] if clip_runs else next(iter(runs.values()))[0][1]
secs = {o: statistics.mean(s["train_seconds"] for k, v in runs.items() if k[0] == o for _, s in v) for o in objectives}
print("Setup: `bash scripts/data_efficiency.sh` (" + settings + "): tiny-ViT "
      f"({any_run['params']} CLIP parameters), batch {any_run['batch_size']}, {any_run['steps']} AdamW steps for every "
      "run whatever the subset size (smaller subsets are seen for more epochs), lr 1e-3 with 20 warm-up steps and a "
      "cosine decay, on the CPU (`--device cpu`). DeCLIP and CL2L use their heads at 1/8 of the papers' widths "
      "(`--head-scale 0.125`) and DeCLIP a 4096-row queue; everything else is each objective's default "
      "(SPEC §2–3). Training time per run, mean: " + ", ".join(f"{o} {secs[o]:.0f} s" for o in objectives) +
      f" ({any_run['device']}, {os.cpu_count()} cores).\n")

# Diagnostics (optional third argument): single runs, seed 0.
diag_dir = sys.argv[3] if len(sys.argv) > 3 else None
diag = {}
if diag_dir:
    for path in sorted(glob.glob(os.path.join(diag_dir, "*", "summary.json"))):
        name = os.path.basename(os.path.dirname(path))
        try:
            label, augment, percent, seed = name.rsplit("-", 3)
        except ValueError:
            continue
        diag[(label, augment, int(percent))] = json.load(open(path))
if diag:
    labels = {"declip": "declip", "declip_mvs": "declip, MVS only (weights 1/0/0/0)", "cl2l": "cl2l"}
    print("## Diagnostics: which part of the recipes costs accuracy here\n")
    print("Single runs (seed 0), the study's settings, `--augment` changing the image views only: `paper` is each")
    print("recipe (seed 0 of the table above), `geometric` drops the colour operations but keeps the random resized crops and")
    print("flips, `none` gives every image view the whole image (the views then differ in their text only).")
    print("Zero-shot top-1 on the 2000 held-out images; the plain-CLIP mean of the table above for reference.\n")
    ps = sorted({k[2] for k in diag})
    print("| objective | augment | " + " | ".join(f"{p}%" for p in ps) + " |")
    print("|---|---|" + "---|" * len(ps))
    clip_row = []
    for p in ps:
        vals = [s["zeroshot_top1"] for _, s in runs.get(("clip", p), [])]
        clip_row.append(f"{statistics.mean(vals):.3f} (mean)" if vals else "—")
    print("| clip (no augmentation) | — | " + " | ".join(clip_row) + " |")
    for label in ["declip", "declip_mvs", "cl2l"]:
        for augment in ["paper", "geometric", "none"]:
            cells = []
            for p in ps:
                if augment == "paper":
                    s = dict(runs.get((label, p), []))
                    cells.append(f"{s[0]['zeroshot_top1']:.3f}" if 0 in s else "—")
                else:
                    s = diag.get((label, augment, p))
                    cells.append(f"{s['zeroshot_top1']:.3f}" if s else "—")
            if any(c != "—" for c in cells):
                print(f"| {labels[label]} | {augment} | " + " | ".join(cells) + " |")
    print()

print("## Reading\n")
print("""With the recipes as published, the seeds' central claim — more supervision from the same pairs — does not hold
on this data: DeCLIP and CL2L are far below plain CLIP at every fraction, 5% included, where CLIP overfits (its
final loss is lowest there). The diagnostics locate the cause in the image views, not the losses: the random
resized crops (area down to 0.2 for DeCLIP, 0.08 for CL2L's local views) on 32-pixel images of one small object cut
or distort the shape, and the zero-shot classes are colour × shape; top-5 stays near 1.0 while top-1 falls (the
colour is learnt, the shape is not). Dropping only the colour operations (`geometric`) changes little. With every
image view the whole image (`none`: the views differ in their text only), both objectives come back: at 5% both
single runs sit above CLIP's three-seed mean (by a little more than one of CLIP's standard deviations), CL2L is at
or above CLIP at 20% and 100%, and DeCLIP falls below CLIP at 20% and 100% (at 20%, its extra terms — ISS, TSS,
NNS — cost against its MVS term alone). The diagnostics are single seeds at one small scale (tiny ViT, 32 px, 300 steps):
suggestive at 5%, not a verdict on the papers at ImageNet scale. What they do show is that here the recipes'
image augmentations, not their losses, decide the outcome.
""")
