#!/usr/bin/env python3
"""PyTorch reference for `cliprt bench attention` (issue #8): torch.nn.functional.scaled_dot_product_attention at the
same shapes, with each of its backends.

Shapes (bf16, [B, H, S, Dh] views of a packed [B, S, 3, H, Dh] QKV tensor, as cliprt reads it in place):
ViT-B/32 (S=50, H=12, Dh=64), the text tower (S=77, causal, H=8, Dh=64), ViT-B/16 (S=197, H=12, Dh=64), at batch
256, 512 and 1024. Backends via torch.nn.attention.sdpa_kernel: flash, efficient (memory-efficient), cudnn, math. For
each: the forward alone, and forward + backward (the backward alone is their difference, reported too), timed with
CUDA events around every call after warm-up calls; medians in milliseconds. A backend that refuses a shape (e.g.
cuDNN on an old driver) is reported as "n/a: <reason>" and the others still run.

Run from the repository root (see docs/perf/attention.md):

    .venv-torch/bin/python scripts/torch_kernels/attention.py
    .venv-torch/bin/python scripts/torch_kernels/attention.py --batch 256 --json
"""

import argparse
import json
import statistics
import sys

SHAPES = [
    # name, seq, heads, head_dim, causal
    ("vit-b32", 50, 12, 64, False),
    ("text", 77, 8, 64, True),
    ("vit-b16", 197, 12, 64, False),
]
BACKENDS = ["flash", "efficient", "cudnn", "math"]


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, nargs="+", default=[256, 512, 1024], help="batch sizes (default 256 512 1024)")
    p.add_argument("--backends", nargs="+", default=BACKENDS, choices=BACKENDS, help="SDPA backends to time")
    p.add_argument("--warmup", type=int, default=5, help="untimed calls before timing (default 5)")
    p.add_argument("--iters", type=int, default=30, help="timed calls; the median is reported (default 30)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    return p.parse_args(argv)


def sdpa_backend(torch, name):
    from torch.nn.attention import SDPBackend
    return {
        "flash": SDPBackend.FLASH_ATTENTION,
        "efficient": SDPBackend.EFFICIENT_ATTENTION,
        "cudnn": SDPBackend.CUDNN_ATTENTION,
        "math": SDPBackend.MATH,
    }[name]


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


def measure(torch, shape, batch, backend, warmup, iters):
    from torch.nn.attention import sdpa_kernel
    import torch.nn.functional as F

    name, seq, heads, head_dim, causal = shape
    # The packed QKV projection output, viewed per head without a copy (strided q, k, v, as cliprt reads them).
    qkv = torch.randn(batch, seq, 3, heads, head_dim, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))
    dout = torch.randn(batch, heads, seq, head_dim, device="cuda", dtype=torch.bfloat16)

    def forward():
        with torch.no_grad():
            F.scaled_dot_product_attention(q, k, v, is_causal=causal)

    def forward_backward():
        out = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        (grad,) = torch.autograd.grad(out, qkv, dout)
        return grad

    with sdpa_kernel([sdpa_backend(torch, backend)]):
        fwd = median_ms(torch, forward, warmup, iters)
        both = median_ms(torch, forward_backward, warmup, iters)
    return {"shape": name, "batch": batch, "backend": backend, "seq": seq, "heads": heads, "head_dim": head_dim,
            "causal": causal, "forward_ms": fwd, "forward_backward_ms": both, "backward_ms": both - fwd}


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        import torch
    except ImportError as e:
        print(f"skipped: no PyTorch: {e}")
        return 0
    if not torch.cuda.is_available():
        print("skipped: no CUDA device visible to PyTorch")
        return 0
    rows = []
    for shape in SHAPES:
        for batch in args.batch:
            for backend in args.backends:
                try:
                    rows.append(measure(torch, shape, batch, backend, args.warmup, args.iters))
                except Exception as e:  # a backend that does not support the shape: report and go on
                    rows.append({"shape": shape[0], "batch": batch, "backend": backend,
                                 "error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"})
                torch.cuda.empty_cache()
    report = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "iters": args.iters, "rows": rows}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"torch {report['torch']} scaled_dot_product_attention, bf16, on {report['device']}; "
          f"median of {args.iters} calls (ms)")
    print(f"{'shape':<8} {'batch':>5} {'backend':<10} {'fwd':>9} {'fwd+bwd':>9} {'bwd':>9}")
    for r in rows:
        if "error" in r:
            print(f"{r['shape']:<8} {r['batch']:>5} {r['backend']:<10} n/a: {r['error']}")
        else:
            print(f"{r['shape']:<8} {r['batch']:>5} {r['backend']:<10} {r['forward_ms']:>9.4f} "
                  f"{r['forward_backward_ms']:>9.4f} {r['backward_ms']:>9.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
