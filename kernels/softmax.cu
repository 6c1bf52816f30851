// Row softmax over the last axis of x [rows, cols], forward and backward. Storage f32 or bf16, arithmetic and every
// accumulation in fp32. Same semantics as the CPU reference (softmax_* in src/backend/cpu/activation.rs).
//
// Maths (per row):
//   forward   m = max_j x_j,  s = Σ_j e^(x_j − m),  y_j = e^(x_j − m) / s
//             (a row of only −∞ gives m = −∞, x − m = NaN and NaN outputs, as in PyTorch)
//   backward  dx_j = y_j·(dy_j − ⟨dy, y⟩)   (dx OVERWRITTEN)
// expf is the accurate one (not __expf); sums are per-thread in a fixed order, then a warp/block tree: deterministic.
//
// Cost for the ViT-B/32 shapes (rows 12800, width 768; N = 9.83 M elements; expf counted as ~10 FLOPs):
//   kernel        FLOP/elem  FLOPs    min bytes f32 / bf16 (read + written)        floor at 3.35 TB/s (H100 SXM)
//   forward       ≈ 25       246 M    x, y: 8 / 4 B/elem → 78.6 / 39.3 MB         23.5 / 11.7 µs
//   backward      ≈ 4        39 M     y, dy, dx: 12 / 6 B/elem → 118 / 59 MB      35.2 / 17.6 µs
// Forward is ≈ 3–6 FLOP/B, below the ~20 FLOP/B fp32 ridge (and expf runs on the FMA/SFU pipes at full rate):
// both are memory-bound, time floor = bytes / DRAM bandwidth. The forward makes three passes over the row (max, sum,
// write; e^(x−m) is recomputed rather than stored in a possibly-bf16 y) and the backward two; the passes after the
// first re-read a row of ≤ 3 KB from L1/L2, so DRAM traffic stays near the floor.
//
// Launch configuration (src/backend/cuda/softmax.rs): cols ≤ 1024: one warp per row, 256-thread blocks (8 rows per
// block), grid = min(⌈rows/8⌉, 32·SMs) with a grid-stride loop over rows; wider rows (`wide` = 1): one 256-thread
// block per row, grid = min(rows, 32·SMs). 16-byte packed accesses (4 f32 / 8 bf16) when the row pointers are
// 16-byte aligned, scalars otherwise and for the cols mod 4|8 tail.
#include "common.cuh"

#include "rows.cuh"


// ------------------------------------------------------------------------------------------------ kernels ---------
template <typename T, typename G>
CLIPRT_DEVICE void softmax_forward_rows(const T* __restrict__ x, T* __restrict__ y, u64 rows, u64 cols, float* red) {
    constexpr int W = 16 / sizeof(T);
    for (u64 row = G::first_row(); row < rows; row += G::row_stride()) {
        const T* xr = x + row * cols;
        T* yr = y + row * cols;
        const bool packed = is_aligned(xr, 16) && is_aligned(yr, 16);
        float m = __int_as_float(0xff800000);  // -inf
        row_for_each<W>(cols, packed, G::rank(), G::size(), [&](auto w, u64 j) {
            constexpr int N = decltype(w)::value;
            float v[N];
            load_n<N>(xr + j, v);
#pragma unroll
            for (int k = 0; k < N; ++k) m = fmaxf(m, v[k]);
        });
        m = G::max(m, red);
        float s = 0.0f;
        row_for_each<W>(cols, packed, G::rank(), G::size(), [&](auto w, u64 j) {
            constexpr int N = decltype(w)::value;
            float v[N];
            load_n<N>(xr + j, v);
#pragma unroll
            for (int k = 0; k < N; ++k) s += expf(v[k] - m);
        });
        s = G::sum(s, red);
        row_for_each<W>(cols, packed, G::rank(), G::size(), [&](auto w, u64 j) {
            constexpr int N = decltype(w)::value;
            float v[N];
            load_n<N>(xr + j, v);
#pragma unroll
            for (int k = 0; k < N; ++k) v[k] = expf(v[k] - m) / s;
            store_n<N>(yr + j, v);
        });
    }
}

template <typename T, typename G>
CLIPRT_DEVICE void softmax_backward_rows(const T* __restrict__ y, const T* __restrict__ dy, T* __restrict__ dx,
                                         u64 rows, u64 cols, float* red) {
    constexpr int W = 16 / sizeof(T);
    for (u64 row = G::first_row(); row < rows; row += G::row_stride()) {
        const T* yr = y + row * cols;
        const T* dyr = dy + row * cols;
        T* dxr = dx + row * cols;
        const bool packed = is_aligned(yr, 16) && is_aligned(dyr, 16) && is_aligned(dxr, 16);
        float inner = 0.0f;
        row_for_each<W>(cols, packed, G::rank(), G::size(), [&](auto w, u64 j) {
            constexpr int N = decltype(w)::value;
            float v[N], d[N];
            load_n<N>(yr + j, v);
            load_n<N>(dyr + j, d);
#pragma unroll
            for (int k = 0; k < N; ++k) inner = fmaf(v[k], d[k], inner);
        });
        inner = G::sum(inner, red);
        row_for_each<W>(cols, packed, G::rank(), G::size(), [&](auto w, u64 j) {
            constexpr int N = decltype(w)::value;
            float v[N], d[N];
            load_n<N>(yr + j, v);
            load_n<N>(dyr + j, d);
#pragma unroll
            for (int k = 0; k < N; ++k) d[k] = v[k] * (d[k] - inner);
            store_n<N>(dxr + j, d);
        });
    }
}

// softmax_forward_{f32,bf16}(x, y, rows, cols, wide) and softmax_backward_{f32,bf16}(y, dy, dx, rows, cols, wide);
// `wide` != 0: one block per row, else one warp per row.
#define SOFTMAX_KERNELS(suffix, T)                                                                                  \
    extern "C" __global__ void softmax_forward_##suffix(const T* x, T* y, u64 rows, u64 cols, int wide) {           \
        __shared__ float red[32];                                                                                   \
        if (wide) {                                                                                                 \
            softmax_forward_rows<T, BlockRows>(x, y, rows, cols, red);                                              \
        } else {                                                                                                    \
            softmax_forward_rows<T, WarpRows>(x, y, rows, cols, red);                                               \
        }                                                                                                           \
    }                                                                                                               \
    extern "C" __global__ void softmax_backward_##suffix(const T* y, const T* dy, T* dx, u64 rows, u64 cols,        \
                                                         int wide) {                                                \
        __shared__ float red[32];                                                                                   \
        if (wide) {                                                                                                 \
            softmax_backward_rows<T, BlockRows>(y, dy, dx, rows, cols, red);                                        \
        } else {                                                                                                    \
            softmax_backward_rows<T, WarpRows>(y, dy, dx, rows, cols, red);                                         \
        }                                                                                                           \
    }

SOFTMAX_KERNELS(f32, float)
SOFTMAX_KERNELS(bf16, bf16)
