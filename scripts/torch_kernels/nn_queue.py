#!/usr/bin/env python3
"""PyTorch reference for `cliprt bench nn-queue` (issue #7): nearest-neighbour search of B queries against a queue of
K keys as PyTorch does it, on the same shapes.

Shapes (bf16): B in {256, 4096, 16384} queries x K in {65536, 262144} keys x D in {256, 512, 1024}. Variants, each
timed with CUDA events around every call after warm-up calls (medians in milliseconds):
  matmul      Q @ K.T alone (bf16 out): the GEMM floor as PyTorch reaches it;
  max         F.normalize(Q) @ K.T, then .max(dim=1) (top-1 value and index);
  topk        the same scores, then .topk(16, dim=1);
  max_f32     fp32 scores from the same values (Q.float() @ K.float().T, TF32 off: a CUDA-core fp32 GEMM), then
              .max(dim=1): the parity-mode form, for reference; opt-in (--variants ... max_f32), since the
              largest shape takes minutes per call on CUDA cores.
The scores tensor (B x K) is allocated by PyTorch; shapes whose scores do not fit are reported as "n/a: <reason>".

Run from the repository root (see docs/perf/nn_queue.md):

    .venv-torch/bin/python scripts/torch_kernels/nn_queue.py
    .venv-torch/bin/python scripts/torch_kernels/nn_queue.py --batch 4096 --keys 65536 --dim 512 --json
"""

import argparse
import json
import statistics
import sys

BATCHES = [256, 4096, 16384]
KEYS = [65536, 262144]
DIMS = [256, 512, 1024]
VARIANTS = ["matmul", "max", "topk", "max_f32"]
DEFAULT_VARIANTS = ["matmul", "max", "topk"]


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, nargs="+", default=BATCHES, help="query batch sizes (default 256 4096 16384)")
    p.add_argument("--keys", type=int, nargs="+", default=KEYS, help="queue sizes (default 65536 262144)")
    p.add_argument("--dim", type=int, nargs="+", default=DIMS, help="embedding widths (default 256 512 1024)")
    p.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS, choices=VARIANTS,
                   help="what to time (default matmul max topk; max_f32 is slow at the large shapes: opt in)")
    p.add_argument("--k", type=int, default=16, help="k of the topk variant (default 16)")
    p.add_argument("--warmup", type=int, default=3, help="untimed calls before timing (default 3)")
    p.add_argument("--iters", type=int, default=20, help="timed calls; the median is reported (default 20)")
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


def measure(torch, batch, keys, dim, variant, k, warmup, iters):
    import torch.nn.functional as F

    q = torch.randn(batch, dim, device="cuda", dtype=torch.bfloat16)
    kv = F.normalize(torch.randn(keys, dim, device="cuda", dtype=torch.float32), dim=1).to(torch.bfloat16)

    if variant == "matmul":
        def fn():
            return q @ kv.T
    elif variant == "max":
        def fn():
            return (F.normalize(q, dim=1) @ kv.T).max(dim=1)
    elif variant == "topk":
        def fn():
            return (F.normalize(q, dim=1) @ kv.T).topk(k, dim=1)
    else:  # max_f32: fp32 scores (CUDA-core fp32 GEMM, TF32 off), then max
        qf, kf = q.float(), kv.float()

        def fn():
            return (F.normalize(qf, dim=1) @ kf.T).max(dim=1)

    with torch.no_grad():
        ms = median_ms(torch, fn, warmup, iters)
    flops = 2.0 * batch * keys * dim
    return {"batch": batch, "keys": keys, "dim": dim, "variant": variant, "ms": ms,
            "tflops": flops / (ms * 1e-3) / 1e12}


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
    torch.backends.cuda.matmul.allow_tf32 = False
    rows = []
    for keys in args.keys:
        for dim in args.dim:
            for batch in args.batch:
                for variant in args.variants:
                    try:
                        rows.append(measure(torch, batch, keys, dim, variant, args.k, args.warmup, args.iters))
                    except Exception as e:  # e.g. out of memory for the B x K scores: report and go on
                        rows.append({"batch": batch, "keys": keys, "dim": dim, "variant": variant,
                                     "error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"})
                    torch.cuda.empty_cache()
    report = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "iters": args.iters, "k": args.k,
              "rows": rows}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"torch {report['torch']} nearest-neighbour search, bf16 inputs, on {report['device']}; "
          f"median of {args.iters} calls (ms); topk k = {args.k}")
    print(f"{'B':>6} {'K':>7} {'D':>5} {'variant':<8} {'ms':>9} {'TFLOP/s':>8}")
    for r in rows:
        if "error" in r:
            print(f"{r['batch']:>6} {r['keys']:>7} {r['dim']:>5} {r['variant']:<8} n/a: {r['error']}")
        else:
            print(f"{r['batch']:>6} {r['keys']:>7} {r['dim']:>5} {r['variant']:<8} {r['ms']:>9.4f} {r['tflops']:>8.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
