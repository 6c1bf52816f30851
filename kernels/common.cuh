// Shared device helpers for every kernel file: element conversions (bf16/f16 storage, fp32 math), packed vector
// loads and stores, the grid-stride loop, and warp/block reductions.
//
// Conventions:
// - Storage types are float, bf16 (__nv_bfloat16) and f16 (__half); arithmetic is always fp32 (`to_float` on load,
//   `from_float<T>` on store, rounding to nearest even like the Rust `half` crate).
// - Element counts are `unsigned long long` (the Rust side passes u64), so tensors past 2^31 elements work.
// - Kernels are `extern "C"` so the Rust side finds them by their plain names.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

typedef __nv_bfloat16 bf16;
typedef __half f16;
typedef unsigned long long u64;

#define CLIPRT_DEVICE __device__ __forceinline__

// Architecture guards. Every file is compiled for sm_80, sm_90a and compute_80 PTX; code that only Hopper has goes
// under CLIPRT_SM90 (TMA, clusters, ...) or CLIPRT_SM90A (wgmma, setmaxnreg: the sm_90a pass only), with a fallback
// for the other passes, so that each pass compiles.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define CLIPRT_SM90 1
#endif
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900 && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define CLIPRT_SM90A 1
#endif

// ------------------------------------------------------------------------------------------------ conversions -----
CLIPRT_DEVICE float to_float(float x) { return x; }
CLIPRT_DEVICE float to_float(bf16 x) { return __bfloat162float(x); }
CLIPRT_DEVICE float to_float(f16 x) { return __half2float(x); }

template <typename T>
CLIPRT_DEVICE T from_float(float x);
template <>
CLIPRT_DEVICE float from_float<float>(float x) { return x; }
// Round to nearest, ties to even (cvt.rn): bit-identical to half::bf16::from_f32 for every non-NaN input (a NaN stays
// a NaN, with the canonical payload).
template <>
CLIPRT_DEVICE bf16 from_float<bf16>(float x) { return __float2bfloat16_rn(x); }
template <>
CLIPRT_DEVICE f16 from_float<f16>(float x) { return __float2half_rn(x); }

// ------------------------------------------------------------------------------------------------ grid stride -----
// Index of this thread in the whole grid, and the number of threads in the grid (the stride of a grid-stride loop).
CLIPRT_DEVICE u64 grid_thread_index() { return (u64)blockIdx.x * blockDim.x + threadIdx.x; }
CLIPRT_DEVICE u64 grid_thread_count() { return (u64)gridDim.x * blockDim.x; }

// for (u64 i = first; i < n; i += stride): every element visited once whatever the grid size, so the host may cap
// the grid at a few waves of blocks.
#define GRID_STRIDE_LOOP(i, n) for (u64 i = grid_thread_index(); i < (u64)(n); i += grid_thread_count())

// ------------------------------------------------------------------------------------------------ vector access ---
// W consecutive elements moved as one aligned load/store (4, 8 or 16 bytes: ld.global.v2/v4 instead of W scalars).
template <typename T, int W>
struct alignas(sizeof(T) * W) Pack {
    T v[W];
};

// Elements per pack for a kernel reading In and writing Out: a 16-byte access on the wider side.
template <typename In, typename Out>
struct PackWidth {
    static constexpr int value = 16 / (sizeof(In) > sizeof(Out) ? sizeof(In) : sizeof(Out));
};

CLIPRT_DEVICE bool is_aligned(const void* p, unsigned bytes) { return ((uintptr_t)p % bytes) == 0; }

template <typename T, int W>
CLIPRT_DEVICE Pack<T, W> load_pack(const T* p, u64 pack_index) {
    return reinterpret_cast<const Pack<T, W>*>(p)[pack_index];
}

template <typename T, int W>
CLIPRT_DEVICE void store_pack(T* p, u64 pack_index, const Pack<T, W>& v) {
    reinterpret_cast<Pack<T, W>*>(p)[pack_index] = v;
}

// ------------------------------------------------------------------------------------------------ element-wise maps
// out[i] = op(x[i]) and out[i] = op(a[i], b[i]) over n elements, loads widened to fp32 and results rounded to Out.
// The packed path runs when every pointer is aligned to its pack (views into a buffer at odd offsets are not), the
// scalar tail (n mod W elements) and the unaligned case use the grid-stride loop. No __restrict__: in-place forms
// (y = y + αx) pass the same pointer as input and output, and each element is read and written by one thread.
template <typename In, typename Out, typename Op>
CLIPRT_DEVICE void map_unary(const In* x, Out* out, u64 n, Op op) {
    constexpr int W = PackWidth<In, Out>::value;
    u64 done = 0;
    if (is_aligned(x, sizeof(In) * W) && is_aligned(out, sizeof(Out) * W)) {
        const u64 packs = n / W;
        GRID_STRIDE_LOOP(p, packs) {
            Pack<In, W> xv = load_pack<In, W>(x, p);
            Pack<Out, W> ov;
#pragma unroll
            for (int k = 0; k < W; ++k) ov.v[k] = from_float<Out>(op(to_float(xv.v[k])));
            store_pack<Out, W>(out, p, ov);
        }
        done = packs * W;
    }
    for (u64 i = done + grid_thread_index(); i < n; i += grid_thread_count()) {
        out[i] = from_float<Out>(op(to_float(x[i])));
    }
}

template <typename In, typename Out, typename Op>
CLIPRT_DEVICE void map_binary(const In* a, const In* b, Out* out, u64 n, Op op) {
    constexpr int W = PackWidth<In, Out>::value;
    u64 done = 0;
    if (is_aligned(a, sizeof(In) * W) && is_aligned(b, sizeof(In) * W) && is_aligned(out, sizeof(Out) * W)) {
        const u64 packs = n / W;
        GRID_STRIDE_LOOP(p, packs) {
            Pack<In, W> av = load_pack<In, W>(a, p);
            Pack<In, W> bv = load_pack<In, W>(b, p);
            Pack<Out, W> ov;
#pragma unroll
            for (int k = 0; k < W; ++k) ov.v[k] = from_float<Out>(op(to_float(av.v[k]), to_float(bv.v[k])));
            store_pack<Out, W>(out, p, ov);
        }
        done = packs * W;
    }
    for (u64 i = done + grid_thread_index(); i < n; i += grid_thread_count()) {
        out[i] = from_float<Out>(op(to_float(a[i]), to_float(b[i])));
    }
}

// ------------------------------------------------------------------------------------------------ reductions ------
// Sum / max over the 32 lanes of a warp (every lane gets the result); all lanes must be active.
CLIPRT_DEVICE float warp_sum(float v) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
    return v;
}

CLIPRT_DEVICE float warp_max(float v) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
    return v;
}

// Sum over a whole block (blockDim.x a multiple of 32, at most 1024); every thread gets the result. `scratch` is 32
// floats of shared memory, reusable after the call returns.
CLIPRT_DEVICE float block_sum(float v, float* scratch) {
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    const int warps = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads();  // scratch may still be read by a previous call
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < warps ? scratch[lane] : 0.0f;
    return warp_sum(v);
}

CLIPRT_DEVICE float block_max(float v, float* scratch) {
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    const int warps = blockDim.x >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < warps ? scratch[lane] : __int_as_float(0xff800000);  // -inf
    return warp_max(v);
}
