// Row helpers shared by the row-wise kernels (kernels/norm.cu, kernels/softmax.cu): packed/scalar element access
// widened to fp32, the fixed split of a row among its threads, and the two ways threads share a row.
#pragma once
#include "common.cuh"

// ------------------------------------------------------------------------------------------------ row helpers -----

// A compile-time element count handed to the per-element lambdas: N = W for a packed access, 1 for a scalar one.
template <int N>
struct Width {
    static constexpr int value = N;
};

// N consecutive elements at p (16-byte aligned when N > 1) widened to fp32, and back.
template <int N, typename T>
CLIPRT_DEVICE void load_n(const T* p, float* v) {
    if constexpr (N == 1) {
        v[0] = to_float(*p);
    } else {
        const Pack<T, N> pk = *reinterpret_cast<const Pack<T, N>*>(p);
#pragma unroll
        for (int k = 0; k < N; ++k) v[k] = to_float(pk.v[k]);
    }
}

template <int N, typename T>
CLIPRT_DEVICE void store_n(T* p, const float* v) {
    if constexpr (N == 1) {
        *p = from_float<T>(v[0]);
    } else {
        Pack<T, N> pk;
#pragma unroll
        for (int k = 0; k < N; ++k) pk.v[k] = from_float<T>(v[k]);
        *reinterpret_cast<Pack<T, N>*>(p) = pk;
    }
}

// Calls f(Width<N>(), j) for the elements j..j+N of a row of `cols`, split among `size` threads (this one is `rank`):
// packs of W when `packed` (every pointer the lambda touches is 16-byte aligned at the row start), then the scalar
// tail. The split depends only on (cols, packed, rank, size), so each thread's summation order is fixed.
template <int W, typename F>
CLIPRT_DEVICE void row_for_each(u64 cols, bool packed, unsigned rank, unsigned size, F f) {
    u64 done = 0;
    if (packed) {
        const u64 packs = cols / W;
        for (u64 p = rank; p < packs; p += size) f(Width<W>(), p * W);
        done = packs * W;
    }
    for (u64 j = done + rank; j < cols; j += size) f(Width<1>(), j);
}

// The threads that share one row. WarpRows: one warp per row, rows strided over every warp of the grid. BlockRows:
// one block per row, rows strided over the blocks. `red` is 32 floats of shared memory (BlockRows only).
struct WarpRows {
    static CLIPRT_DEVICE unsigned rank() { return threadIdx.x & 31; }
    static CLIPRT_DEVICE unsigned size() { return 32; }
    static CLIPRT_DEVICE u64 first_row() { return (u64)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5); }
    static CLIPRT_DEVICE u64 row_stride() { return (u64)gridDim.x * (blockDim.x >> 5); }
    static CLIPRT_DEVICE float sum(float v, float*) { return warp_sum(v); }
    static CLIPRT_DEVICE float max(float v, float*) { return warp_max(v); }
};
struct BlockRows {
    static CLIPRT_DEVICE unsigned rank() { return threadIdx.x; }
    static CLIPRT_DEVICE unsigned size() { return blockDim.x; }
    static CLIPRT_DEVICE u64 first_row() { return blockIdx.x; }
    static CLIPRT_DEVICE u64 row_stride() { return gridDim.x; }
    static CLIPRT_DEVICE float sum(float v, float* red) { return block_sum(v, red); }
    static CLIPRT_DEVICE float max(float v, float* red) { return block_max(v, red); }
};
