// The optimiser and its reductions: one fused AdamW step over the whole fp32 parameter buffer, and the deterministic
// Σx² (global gradient norm for clipping) and Σx (loss sums) in f64.
//
// Maths (torch.optim.AdamW, as src/backend/cpu/optim.rs arranges it), element by element, fp32:
//   p ← p·shrink                     shrink = 1 − lr·wd inside a decayed segment, else 1 (decoupled decay, first)
//   m ← β1·m + (1 − β1)·g
//   v ← β2·v + ((1 − β2)·g)·g
//   p ← p − (step_size·m) / (√v / bias2_sqrt + eps)       step_size = lr/(1 − β1^t), bias2_sqrt = √(1 − β2^t)
//   shadow ← p                       (bf16 rounded to nearest even, or f32; the compute copy the layers read)
// The constants are computed on the host in f64 and rounded to f32 exactly as the CPU reference does, and every
// operation is an explicit round-to-nearest intrinsic (__fmul_rn, __fadd_rn, __fdiv_rn, __fsqrt_rn) so that nvcc
// cannot contract a multiply-add into an fma: the result is the CPU reference's, bit for bit, in the same order.
//
// Decay segments: the host merges adjacent segments with the same flag and passes the boundaries of the decayed
// runs as one small sorted u64 array [s0, e0, s1, e1, …] (device memory, built once per parameter layout by the
// launcher). Element i decays iff the number of boundaries ≤ i is odd: one binary search per pack of 4 elements over
// a few hundred L1-resident entries, then a forward walk across the pack. A per-element mask would add n bytes (or
// n/8 bit-packed) of DRAM traffic per step and a buffer to keep in sync; the boundary array adds nothing measurable.
//
// FLOPs and minimum bytes per parameter: ~12 FLOPs (2 divisions and a square root among them);
//   read p, g, m, v (16 B) + write p, m, v (12 B) = 28 B, + 2 B for a bf16 shadow (30 B) or 4 B for f32 (32 B).
// Memory-bound: e.g. 150 M parameters (ViT-B/16 CLIP) with a bf16 shadow move 4.5 GB, ≈ 1.3 ms at 3.35 TB/s.
//
// Reductions: Σ f(x[i]) with f(x) = x² or x, each fp32 element widened to f64 and accumulated in f64 (the trait
// returns f64). Two passes, fixed order, no atomics: pass 1 (`*_partials_f32`) has REDUCE_BLOCKS ≤ 1024 blocks (a
// function of n only, not of the device, so every GPU gives the same bits) each summing a grid-stride share into
// one f64 partial (thread sums in index order, then a fixed shuffle tree); pass 2 (`reduce_partials_f64`, one block)
// sums the partials in a fixed order and writes out[0]. 4 B read per element, 2 FLOPs (f64): memory-bound.
//
// Launch configuration: AdamW is 1-D, 256 threads, grid = min(⌈n/(256·4)⌉, 16·SMs) blocks, grid-stride over packs of
// 4 elements (16-byte f32 loads; 8-byte bf16 stores) when every pointer is aligned, scalar otherwise and for the
// n mod 4 tail. Reductions: 256 threads; pass 1 with min(⌈n/(256·4)⌉, 1024) blocks, pass 2 with one block.
#include "common.cuh"

// The per-step constants, f32 as the CPU reference rounds them (layout shared with `AdamWArgs` in optim.rs).
struct AdamWArgs {
    float shrink;  // 1 − lr·wd, for the decayed runs
    float beta1;
    float beta2;
    float one_minus_beta1;
    float one_minus_beta2;
    float bias2_sqrt;
    float eps;
    float step_size;
};

// Index of the first boundary > i (so i decays iff the result is odd).
CLIPRT_DEVICE unsigned upper_bound(const u64* bounds, unsigned count, u64 i) {
    unsigned lo = 0, hi = count;
    while (lo < hi) {
        const unsigned mid = (lo + hi) >> 1;
        if (bounds[mid] <= i) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    return lo;
}

// The shadow element type of the kernel without a shadow (sizeof 1 marks it; nothing is stored).
struct NoShadow {};

CLIPRT_DEVICE void store_shadow(NoShadow*, u64, float) {}
CLIPRT_DEVICE void store_shadow(float* s, u64 i, float p) { s[i] = p; }
CLIPRT_DEVICE void store_shadow(bf16* s, u64 i, float p) { s[i] = __float2bfloat16_rn(p); }

// One element, in the CPU reference's operation order.
CLIPRT_DEVICE void adamw_element(const AdamWArgs& a, bool decay, float& p, float g, float& m, float& v) {
    if (decay) p = __fmul_rn(p, a.shrink);
    m = __fadd_rn(__fmul_rn(a.beta1, m), __fmul_rn(a.one_minus_beta1, g));
    v = __fadd_rn(__fmul_rn(a.beta2, v), __fmul_rn(__fmul_rn(a.one_minus_beta2, g), g));
    const float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(v), a.bias2_sqrt), a.eps);
    p = __fsub_rn(p, __fdiv_rn(__fmul_rn(a.step_size, m), denom));
}

template <typename S>
CLIPRT_DEVICE void adamw(float* __restrict__ p, const float* __restrict__ g, float* __restrict__ m,
                         float* __restrict__ v, S* __restrict__ shadow, u64 n, const u64* __restrict__ bounds,
                         unsigned bound_count, AdamWArgs a) {
    constexpr int W = 4;
    constexpr bool has_shadow = sizeof(S) > 1;
    u64 done = 0;
    if (is_aligned(p, 16) && is_aligned(g, 16) && is_aligned(m, 16) && is_aligned(v, 16) &&
        (!has_shadow || is_aligned(shadow, sizeof(S) * W))) {
        const u64 packs = n / W;
        GRID_STRIDE_LOOP(q, packs) {
            const u64 first = q * W;
            unsigned b = upper_bound(bounds, bound_count, first);
            Pack<float, W> pv = load_pack<float, W>(p, q);
            const Pack<float, W> gv = load_pack<float, W>(g, q);
            Pack<float, W> mv = load_pack<float, W>(m, q);
            Pack<float, W> vv = load_pack<float, W>(v, q);
            Pack<S, W> sv;
#pragma unroll
            for (int k = 0; k < W; ++k) {
                while (b < bound_count && bounds[b] <= first + k) ++b;
                adamw_element(a, b & 1u, pv.v[k], gv.v[k], mv.v[k], vv.v[k]);
                if constexpr (has_shadow) sv.v[k] = from_float<S>(pv.v[k]);
            }
            store_pack<float, W>(p, q, pv);
            store_pack<float, W>(m, q, mv);
            store_pack<float, W>(v, q, vv);
            if constexpr (has_shadow) store_pack<S, W>(shadow, q, sv);
        }
        done = packs * W;
    }
    for (u64 i = done + grid_thread_index(); i < n; i += grid_thread_count()) {
        const bool decay = upper_bound(bounds, bound_count, i) & 1u;
        float pi = p[i], mi = m[i], vi = v[i];
        adamw_element(a, decay, pi, g[i], mi, vi);
        p[i] = pi;
        m[i] = mi;
        v[i] = vi;
        store_shadow(shadow, i, pi);
    }
}

extern "C" __global__ void adamw_f32(float* p, const float* g, float* m, float* v, u64 n, const u64* bounds,
                                     unsigned bound_count, AdamWArgs a) {
    adamw<NoShadow>(p, g, m, v, nullptr, n, bounds, bound_count, a);
}
extern "C" __global__ void adamw_f32_shadow_bf16(float* p, const float* g, float* m, float* v, bf16* shadow, u64 n,
                                                 const u64* bounds, unsigned bound_count, AdamWArgs a) {
    adamw<bf16>(p, g, m, v, shadow, n, bounds, bound_count, a);
}
extern "C" __global__ void adamw_f32_shadow_f32(float* p, const float* g, float* m, float* v, float* shadow, u64 n,
                                                const u64* bounds, unsigned bound_count, AdamWArgs a) {
    adamw<float>(p, g, m, v, shadow, n, bounds, bound_count, a);
}

// ------------------------------------------------------------------------------------------------ reductions ------
CLIPRT_DEVICE double warp_sum_f64(double x) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) x += __shfl_xor_sync(0xffffffffu, x, offset);
    return x;
}

// Sum over the block (blockDim.x a multiple of 32); the result is valid in thread 0. Fixed order: a shuffle tree in
// each warp, then warp 0 over the warp sums.
CLIPRT_DEVICE double block_sum_f64(double x) {
    __shared__ double warp_sums[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    x = warp_sum_f64(x);
    if (lane == 0) warp_sums[warp] = x;
    __syncthreads();
    x = (warp == 0 && lane < warps) ? warp_sums[lane] : 0.0;
    return warp == 0 ? warp_sum_f64(x) : 0.0;
}

template <bool Square>
CLIPRT_DEVICE void reduce_partials(const float* x, u64 n, double* partials) {
    double acc = 0.0;
    GRID_STRIDE_LOOP(i, n) {
        const double xi = (double)x[i];
        acc += Square ? xi * xi : xi;
    }
    acc = block_sum_f64(acc);
    if (threadIdx.x == 0) partials[blockIdx.x] = acc;
}

// partials[b] = Σ over block b's grid-stride share of x[i]² (resp. x[i]); gridDim.x partials.
extern "C" __global__ void sum_squares_partials_f32(const float* x, u64 n, double* partials) {
    reduce_partials<true>(x, n, partials);
}
extern "C" __global__ void sum_partials_f32(const float* x, u64 n, double* partials) {
    reduce_partials<false>(x, n, partials);
}

// out[0] = Σ partials[0..count], one block, fixed order.
extern "C" __global__ void reduce_partials_f64(const double* partials, unsigned count, double* out) {
    double acc = 0.0;
    for (unsigned i = threadIdx.x; i < count; i += blockDim.x) acc += partials[i];
    acc = block_sum_f64(acc);
    if (threadIdx.x == 0) out[0] = acc;
}
