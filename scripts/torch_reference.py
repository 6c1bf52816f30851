#!/usr/bin/env python3
"""PyTorch eager baseline for `cliprt bench train-step`, measured side by side with cliprt in one run (issue #4).

Both sides train the same model from the same open_clip JSON config: here open_clip's own `CLIP` (ViT with exact
GELU, open_clip's defaults), open_clip's `ClipLoss`, and `torch.optim.AdamW(lr=1e-3, betas=(0.9, 0.98), eps=1e-6,
weight_decay=0.1)` in plain eager mode (default foreach). One step = zero_grad + forward + loss + backward +
optimizer.step on a fixed random batch: images N(0, 1) [B, 3, R, R] and token rows shaped like the CLIP tokenizer's
output (SOT 49406, 0..context-2 random ids below SOT, EOT 49407, zeros; SOT/EOT are the last two ids of the
config's vocabulary). samples/s = B * steps / (time of the timed steps), after the warm-up steps.

"Side by side": the rounds alternate, a PyTorch measurement then `cliprt bench train-step --device cpu|cuda
--model-config FILE --batch B --warmup W --steps S --json` as a subprocess (its JSON line's `samples_per_s`), so
that both see the same machine conditions; the best and the median of each side and their ratio are printed. Both
sides get the same thread count (torch.set_num_threads; RAYON_NUM_THREADS for cliprt). A cliprt that is missing or
fails is reported as "cliprt: not available: <reason>" and the PyTorch figures are still printed.

Set up and run from the repository root (see docs/perf/cpu.md):

    bash scripts/torch-env.sh            # .venv-torch with pinned torch and open_clip_torch
    cargo build --release
    .venv-torch/bin/python scripts/torch_reference.py --cpu
    .venv-torch/bin/python scripts/torch_reference.py --cpu --torch-only --json
    .venv-torch/bin/python scripts/torch_reference.py --device cuda --precision amp_bf16 --markdown docs/perf/x.md

The fused kernels' PyTorch baselines (issues #6-#8, GPU only) are sections of this script, each in its own file
under scripts/torch_kernels/ and reached through a first argument naming the kernel:

    .venv-torch/bin/python scripts/torch_reference.py clip-loss --help   # eager and torch.compile CLIP loss
    .venv-torch/bin/python scripts/torch_reference.py nn-queue --help    # matmul + max / topk
    .venv-torch/bin/python scripts/torch_reference.py attention --help   # scaled_dot_product_attention backends
"""

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    where = p.add_mutually_exclusive_group()
    where.add_argument("--cpu", action="store_true", help="run on the CPU (same as --device cpu)")
    where.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda when available, else cpu")
    p.add_argument("--model-config", default=os.path.join(ROOT, "configs", "tiny-ViT.json"),
                   help="open_clip JSON model config (embed_dim, vision_cfg, text_cfg); default configs/tiny-ViT.json")
    p.add_argument("--batch", type=int, default=256, help="image/text pairs per step (default 256)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per round (default 2)")
    p.add_argument("--steps", type=int, default=10, help="timed steps per round (default 10)")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds PyTorch / cliprt (default 3)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for both sides (default: every core this process may use)")
    p.add_argument("--precision", choices=["fp32", "amp_bf16"], default="fp32",
                   help="PyTorch side only: fp32 (default) or bf16 autocast (for GPU comparisons)")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights and inputs (default 0)")
    p.add_argument("--cliprt", default=os.path.join(ROOT, "target", "release", "cliprt"),
                   help="the cliprt binary (default target/release/cliprt)")
    p.add_argument("--cliprt-timeout", type=float, default=1800.0, help="seconds one cliprt round may take")
    p.add_argument("--torch-only", action="store_true", help="measure PyTorch only, do not run cliprt")
    p.add_argument("--json", action="store_true", help="print one JSON line instead of text")
    p.add_argument("--markdown", metavar="FILE", help="append a results table to FILE")
    args = p.parse_args(argv)
    if args.cpu:
        args.device = "cpu"
    for name in ("batch", "steps", "rounds"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1")
    if args.warmup < 0:
        p.error("--warmup must be at least 0")
    if args.threads is not None and args.threads < 1:
        p.error("--threads must be at least 1")
    return args


def available_cores():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def random_batch(torch, cfg, batch, seed, device):
    """Images N(0, 1) and tokenizer-shaped rows, as cliprt's bench draws them (not the same numbers)."""
    g = torch.Generator().manual_seed(seed)
    size = cfg["vision_cfg"]["image_size"]
    size = size if isinstance(size, int) else size[0]
    images = torch.randn(batch, 3, size, size, generator=g)
    context = cfg["text_cfg"].get("context_length", 77)
    vocab = cfg["text_cfg"].get("vocab_size", 49408)
    sot, eot = vocab - 2, vocab - 1
    tokens = torch.zeros(batch, context, dtype=torch.long)
    words = torch.randint(0, context - 1, (batch,), generator=g)  # 0 ..= context-2 ids between SOT and EOT
    ids = torch.randint(0, sot, (batch, context), generator=g)
    for row in range(batch):
        n = int(words[row])
        tokens[row, 0] = sot
        tokens[row, 1:n + 1] = ids[row, :n]
        tokens[row, n + 1] = eot
    return images.to(device), tokens.to(device)


class TorchBench:
    def __init__(self, args, cfg):
        import open_clip
        import torch

        self.torch = torch
        self.args = args
        self.device = torch.device(args.device)
        torch.manual_seed(args.seed)
        kwargs = dict(embed_dim=cfg["embed_dim"], vision_cfg=cfg["vision_cfg"], text_cfg=cfg["text_cfg"],
                      quick_gelu=cfg.get("quick_gelu", False))
        cls = open_clip.model.CustomTextCLIP if cfg.get("custom_text", False) else open_clip.model.CLIP
        self.model = cls(**kwargs).to(self.device).train()
        self.params = sum(p.numel() for p in self.model.parameters())
        self.loss_fn = open_clip.loss.ClipLoss()
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-3, betas=(0.9, 0.98), eps=1e-6,
                                     weight_decay=0.1)
        self.images, self.tokens = random_batch(torch, cfg, args.batch, args.seed, self.device)
        self.last_loss = float("nan")

    def sync(self):
        if self.device.type == "cuda":
            self.torch.cuda.synchronize()

    def step(self, phases=None):
        """One training step; with `phases` (CPU only: no device syncs needed) adds ms per phase to it."""
        torch = self.torch
        t0 = time.perf_counter()
        self.opt.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.args.precision == "amp_bf16"):
            image_features, text_features, logit_scale = self.model(self.images, self.tokens)
            loss = self.loss_fn(image_features, text_features, logit_scale)
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        self.opt.step()
        t3 = time.perf_counter()
        if phases is not None:
            phases["forward_loss"] += (t1 - t0) * 1e3
            phases["backward"] += (t2 - t1) * 1e3
            phases["optimizer"] += (t3 - t2) * 1e3
        return loss

    def measure(self):
        for _ in range(self.args.warmup):
            self.step()
        self.sync()
        phases = {"forward_loss": 0.0, "backward": 0.0, "optimizer": 0.0} if self.device.type == "cpu" else None
        start = time.perf_counter()
        for _ in range(self.args.steps):
            loss = self.step(phases)
        self.sync()
        seconds = time.perf_counter() - start
        self.last_loss = float(loss.detach())
        result = {"samples_per_s": self.args.batch * self.args.steps / seconds, "step_ms": seconds * 1e3 / self.args.steps}
        if phases is not None:
            result["phase_ms"] = {k: v / self.args.steps for k, v in phases.items()}
        return result


def tail(text, lines=4, chars=400):
    """The last non-empty lines of a subprocess's output, on one line."""
    kept = [line.strip() for line in text.splitlines() if line.strip()][-lines:]
    return " | ".join(kept)[-chars:]


def run_cliprt(args, threads):
    """One `cliprt bench train-step` round: (result dict, None) or (None, reason)."""
    if not os.path.exists(args.cliprt):
        return None, f"{args.cliprt} does not exist (cargo build --release)"
    cmd = [args.cliprt, "bench", "train-step", "--device", args.device, "--model-config", args.model_config,
           "--batch", str(args.batch), "--warmup", str(args.warmup), "--steps", str(args.steps), "--json"]
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.cliprt_timeout)
    except subprocess.TimeoutExpired:
        return None, f"timed out after {args.cliprt_timeout:.0f} s: {' '.join(cmd)}"
    except OSError as e:
        return None, f"{e}"
    if proc.returncode != 0:
        return None, f"exit status {proc.returncode}: {tail(proc.stderr or proc.stdout) or '(no output)'}"
    for line in reversed(proc.stdout.strip().splitlines()):
        try:
            report = json.loads(line)
        except ValueError:
            continue
        if isinstance(report, dict) and isinstance(report.get("samples_per_s"), (int, float)):
            return report, None
    return None, f"no JSON line with samples_per_s in its output: {tail(proc.stdout + proc.stderr) or '(none)'}"


def summary(values):
    return {"best": max(values), "median": statistics.median(values), "all": values} if values else None


def fmt(x):
    return f"{x:,.1f}" if x is not None else "-"


def main(argv):
    args = parse_args(argv)
    import open_clip
    import torch

    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("torch_reference: --device cuda, but torch.cuda.is_available() is False")
    threads = args.threads or available_cores()
    torch.set_num_threads(threads)
    with open(args.model_config) as f:
        cfg = json.load(f)

    bench = TorchBench(args, cfg)
    if args.device == "cuda":
        machine = torch.cuda.get_device_name(0)
    else:
        machine = f"{cpu_model()}, {available_cores()} cores"
    log = (lambda *a: print(*a, file=sys.stderr, flush=True)) if args.json else (lambda *a: print(*a, flush=True))
    log(f"model {os.path.relpath(args.model_config, ROOT)} ({bench.params:,} parameters), batch {args.batch}, "
        f"{args.warmup} warm-up + {args.steps} timed steps, {args.rounds} rounds, {threads} threads, {machine}")
    log(f"torch {torch.__version__} eager {args.precision}, open_clip {open_clip.__version__}")

    torch_runs, cliprt_runs, cliprt_error = [], [], None
    for r in range(1, args.rounds + 1):
        t = bench.measure()
        torch_runs.append(t)
        log(f"round {r}: PyTorch {fmt(t['samples_per_s'])} samples/s ({t['step_ms']:.1f} ms/step)")
        if args.torch_only or cliprt_error is not None:
            continue
        c, cliprt_error = run_cliprt(args, threads)
        if c is None:
            log(f"round {r}: cliprt: not available: {cliprt_error}")
        else:
            cliprt_runs.append(c)
            log(f"round {r}: cliprt  {fmt(c['samples_per_s'])} samples/s ({c.get('device', '?')})")

    t_sum = summary([t["samples_per_s"] for t in torch_runs])
    c_sum = summary([c["samples_per_s"] for c in cliprt_runs])
    ratio = {k: c_sum[k] / t_sum[k] for k in ("best", "median")} if c_sum else None
    report = {
        "date": datetime.date.today().isoformat(),
        "device": args.device,
        "machine": machine,
        "threads": threads,
        "model_config": os.path.relpath(args.model_config, ROOT),
        "params": bench.params,
        "batch": args.batch,
        "warmup": args.warmup,
        "steps": args.steps,
        "rounds": args.rounds,
        "torch": {"version": torch.__version__, "open_clip": open_clip.__version__, "precision": args.precision,
                  "samples_per_s": t_sum, "phase_ms": torch_runs[-1].get("phase_ms"), "last_loss": bench.last_loss},
        "cliprt": ({"samples_per_s": c_sum, "report": cliprt_runs[-1]} if c_sum else
                   {"skipped": "--torch-only"} if args.torch_only else {"error": cliprt_error}),
        "ratio_cliprt_over_torch": ratio,
    }

    if args.json:
        print(json.dumps(report), flush=True)
    else:
        print(f"PyTorch eager: best {fmt(t_sum['best'])}, median {fmt(t_sum['median'])} samples/s")
        if c_sum:
            print(f"cliprt:        best {fmt(c_sum['best'])}, median {fmt(c_sum['median'])} samples/s")
            print(f"cliprt / PyTorch: {ratio['best']:.2f}x (best), {ratio['median']:.2f}x (median)")
        elif args.torch_only:
            print("cliprt: skipped (--torch-only)")
        else:
            print(f"cliprt: not available: {cliprt_error}")
    if args.markdown:
        append_markdown(args.markdown, report)


def append_markdown(path, rep):
    t, c, ratio = rep["torch"]["samples_per_s"], rep["cliprt"].get("samples_per_s"), rep["ratio_cliprt_over_torch"]
    cliprt_cell = (f"{fmt(c['best'])} / {fmt(c['median'])}" if c else
                   "skipped (--torch-only)" if "skipped" in rep["cliprt"] else "not available")
    ratio_cell = f"{ratio['best']:.2f}x / {ratio['median']:.2f}x" if ratio else "-"
    lines = [
        "",
        f"Measured {rep['date']} by `scripts/torch_reference.py` ({rep['device']}, {rep['machine']}, "
        f"{rep['threads']} threads; torch {rep['torch']['version']} {rep['torch']['precision']}, "
        f"open_clip {rep['torch']['open_clip']}; {rep['warmup']} warm-up + {rep['steps']} timed steps, "
        f"{rep['rounds']} alternating rounds):",
        "",
        "| model | params | batch | PyTorch eager samples/s (best / median) | cliprt samples/s (best / median) "
        "| cliprt / PyTorch (best / median) |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
        f"| {rep['model_config']} | {rep['params']:,} | {rep['batch']} | {fmt(t['best'])} / {fmt(t['median'])} "
        f"| {cliprt_cell} | {ratio_cell} |",
        "",
    ]
    with open(path, "a") as f:
        f.write("\n".join(lines))


# The kernel sections: first argument -> scripts/torch_kernels/<module>.py, whose main(argv) gets the rest.
KERNEL_SECTIONS = {"clip-loss": "clip_loss", "nn-queue": "nn_queue", "attention": "attention"}


def run_kernel_section(name, argv):
    import importlib.util

    path = os.path.join(ROOT, "scripts", "torch_kernels", KERNEL_SECTIONS[name] + ".py")
    spec = importlib.util.spec_from_file_location("torch_kernels_" + KERNEL_SECTIONS[name], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main(argv)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] in KERNEL_SECTIONS:
        sys.exit(run_kernel_section(sys.argv[1], sys.argv[2:]))
    main(sys.argv[1:])
