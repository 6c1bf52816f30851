#!/usr/bin/env python3
"""PyTorch reference for `cliprt bench clip-loss` (issue #6): the CLIP loss as PyTorch computes it, on the same shapes.

Shapes: N in {4096, 16384, 32768, 65536, 262144} image/text pairs, D = 512, bf16 autocast (the embeddings are bf16
leaf tensors with requires_grad; the logit scale is an fp32 parameter). The loss is open_clip's single-device form:
    x = F.normalize(image), y = F.normalize(text), logits = exp(t) * x @ y.T,
    loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
Variants, each timed with CUDA events around every call after warm-up calls (medians in milliseconds):
  eager     the above under torch.autocast(bfloat16), forward + backward (loss.backward());
  compile   torch.compile of the same function (default mode), forward + backward; compile time excluded (warm-up);
  forward   eager forward alone.
Peak memory: torch.cuda.max_memory_allocated during one forward + backward minus the memory held before it (inputs,
their gradients' buffers allocated once beforehand), in MB. A shape that does not fit (the N x N logits: 2 bytes in
bf16 plus fp32 softmax copies; 256k needs hundreds of GB) is reported as "n/a: <reason>" and the others still run.

Run from the repository root (see docs/perf/clip_loss.md):

    .venv-torch/bin/python scripts/torch_kernels/clip_loss.py
    .venv-torch/bin/python scripts/torch_kernels/clip_loss.py --n 32768 --json
"""

import argparse
import json
import math
import statistics
import sys

SIZES = [4096, 16384, 32768, 65536, 262144]
VARIANTS = ["eager", "compile", "forward"]


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, nargs="+", default=SIZES, help="batch sizes N (default 4k 16k 32k 64k 256k)")
    p.add_argument("--dim", type=int, default=512, help="embedding width D (default 512)")
    p.add_argument("--variants", nargs="+", default=VARIANTS, choices=VARIANTS, help="what to time")
    p.add_argument("--warmup", type=int, default=3, help="untimed calls before timing (default 3)")
    p.add_argument("--iters", type=int, default=10, help="timed calls; the median is reported (default 10)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    return p.parse_args(argv)


def median_ms(torch, fn, warmup, iters):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    pairs = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        pairs.append((start, end))
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in pairs)


def clip_loss(torch, image, text, log_scale, labels):
    import torch.nn.functional as F

    x = F.normalize(image, dim=-1)
    y = F.normalize(text, dim=-1)
    logits = log_scale.exp() * x @ y.t()
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2


def measure(torch, n, dim, variants, warmup, iters):
    dev = torch.device("cuda")
    gen = torch.Generator(device=dev).manual_seed(0)
    image = torch.randn(n, dim, device=dev, generator=gen).to(torch.bfloat16).requires_grad_(True)
    text = (0.4 * image.detach().float() + torch.randn(n, dim, device=dev, generator=gen)).to(torch.bfloat16)
    text.requires_grad_(True)
    log_scale = torch.tensor(math.log(1 / 0.07), device=dev, requires_grad=True)
    labels = torch.arange(n, device=dev)
    row = {"n": n, "dim": dim}

    def step(fn):
        def run():
            image.grad = text.grad = log_scale.grad = None
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = fn(torch, image, text, log_scale, labels)
            loss.backward()
        return run

    def forward_only():
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            clip_loss(torch, image, text, log_scale, labels)

    compiled = torch.compile(clip_loss) if "compile" in variants else None
    for v in variants:
        fn = {"eager": step(clip_loss), "compile": step(compiled) if compiled else None, "forward": forward_only}[v]
        try:
            fn()  # allocates the gradients once (and compiles), so the peak below is the step's own
            torch.cuda.synchronize()
            before = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            fn()
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated() - before
            row[v + "_ms"] = median_ms(torch, fn, warmup, iters)
            row[v + "_peak_mb"] = peak / 1e6
        except torch.cuda.OutOfMemoryError as e:
            row[v + "_ms"] = "n/a: out of memory (" + str(e).split(".")[0] + ")"
            torch.cuda.empty_cache()
        except Exception as e:  # noqa: BLE001 - report and go on with the other variants
            row[v + "_ms"] = "n/a: " + type(e).__name__ + ": " + str(e).split("\n")[0][:200]
            torch.cuda.empty_cache()
    return row


def fmt(v):
    return f"{v:.3f}" if isinstance(v, float) else ("-" if v is None else str(v))


def main(argv):
    args = parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("skipped: no CUDA device for PyTorch")
        return 0
    torch.backends.cuda.matmul.allow_tf32 = False
    rows = [measure(torch, n, args.dim, args.variants, args.warmup, args.iters) for n in args.n]
    report = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "iters": args.iters, "rows": rows}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"clip_loss (PyTorch {report['torch']}, bf16 autocast) on {report['device']}; median of {args.iters} calls")
    cols = [c for v in args.variants for c in (v + "_ms", v + "_peak_mb")]
    print(f"{'N':>7} {'D':>5} " + " ".join(f"{c:>16}" for c in cols))
    for r in rows:
        print(f"{r['n']:>7} {r['dim']:>5} " + " ".join(f"{fmt(r.get(c)):>16}" for c in cols))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
