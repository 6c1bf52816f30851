// Row normalisations over the last axis of x [rows, cols]: LayerNorm forward/backward and L2 normalisation
// (F.normalize) forward/backward. Storage f32 or bf16 (activations, gamma, beta); statistics, norms, parameter
// gradients and every accumulation in fp32. Same semantics as the CPU reference (src/backend/cpu/norm.rs).
//
// Maths (n = cols, per row):
//   LayerNorm fwd   μ = Σx/n,  var = Σ(x−μ)²/n (two passes, biased),  r = 1/√(var + eps),
//                   y = (x−μ)·r·γ + β;  saves mean = μ, rstd = r (fp32).
//   LayerNorm bwd   x̂ = (x−μ)·r,  g = dy·γ:  dx = r·(g − Σg/n − x̂·Σ(g·x̂)/n)  (OVERWRITTEN),
//                   dγ += Σ_rows dy·x̂,  dβ += Σ_rows dy  (ACCUMULATED into fp32 master grads).
//   L2 fwd          ‖x‖ = √Σx²,  y = x / max(‖x‖, 1e-12);  saves the unclamped ‖x‖ (fp32).
//   L2 bwd          dx = (dy − y·⟨dy, y⟩)/‖x‖,  or dy/1e-12 where ‖x‖ < 1e-12  (OVERWRITTEN).
//
// Determinism: no atomics. dγ/dβ are summed per chunk of LN_ROWS_PER_CHUNK (32) consecutive rows, rows in order, by
// one block into a fp32 scratch [chunks, 2·cols] (the CPU reference uses the same 32-row blocks), then a second
// kernel adds the chunks' sums in chunk order and adds that total to dγ/dβ. Every order is fixed by the shape alone
// (not by the GPU or the grid), so the bits are the same on every run and every device.
//
// Cost for the ViT-B/32 shapes (rows 12800 = 256 images × 50 tokens, width 768; N = 9.83 M elements):
//   kernel            FLOP/elem  FLOPs     min bytes f32 / bf16 (read + written)        floor at 3.35 TB/s (H100 SXM)
//   layernorm fwd     ≈ 8        79 M      x, y: 8 / 4 B/elem → 78.7 / 39.4 MB         23.5 / 11.8 µs
//   layernorm bwd     ≈ 16       157 M     dy, x, dx: 12 / 6 B/elem → 118 / 59 MB      35.2 / 17.6 µs
//                                          (+ 2.5 MB partial sums written and read back: 400 chunks × 1536 × 4 B)
//   l2 fwd            ≈ 3        29 M      8 / 4 B/elem → 78.7 / 39.4 MB               23.5 / 11.8 µs
//   l2 bwd            ≈ 5        49 M      dy, y, dx: 12 / 6 B/elem → 118 / 59 MB      35.2 / 17.6 µs
// (γ, β [768] and the per-row statistics [12800] are < 0.2 MB.) Every kernel is far below the fp32 ridge
// (~20 FLOP/B): memory-bound, time floor = bytes / DRAM bandwidth. The row passes after the first re-read the row,
// which is small (≤ 3 KB at width 768) and served from L1/L2, so DRAM traffic stays near the floor.
//
// Launch configuration (src/backend/cuda/norm.rs):
//   row kernels (layernorm fwd, l2 fwd/bwd): cols ≤ 1024: one warp per row, 256-thread blocks (8 rows per block),
//     grid = min(⌈rows/8⌉, 32·SMs) with a grid-stride loop over rows; wider rows (`wide` = 1): one 256-thread block
//     per row, grid = min(rows, 32·SMs). Each lane moves 16-byte packs (4 f32 / 8 bf16) when the row and γ/β
//     pointers are 16-byte aligned, scalars otherwise and for the cols mod 4|8 tail.
//   layernorm bwd: one block per 32-row chunk (grid = ⌈rows/32⌉), 128 threads (256 for cols > 1024), the block
//     cooperating on each row in turn; the chunk's dγ/dβ sums in dynamic shared memory (2·cols·4 B) when that is at
//     most 47 KB (cols ≤ 6016), else directly in the chunk's row of the scratch. Then layernorm_backward_reduce:
//     one thread per parameter (2·cols), 256-thread blocks, summing the chunks in order.
#include "common.cuh"

#define L2_EPS 1e-12f
// Rows whose dγ/dβ sums one block of layernorm_backward forms; part of the summation order (do not derive it from
// the device). Must match LN_ROWS_PER_CHUNK in src/backend/cuda/norm.rs.
#define LN_ROWS_PER_CHUNK 32

#include "rows.cuh"


template <typename T>
struct PackOf {
    static constexpr int value = 16 / sizeof(T);
};

// ------------------------------------------------------------------------------------------------ LayerNorm fwd ---
template <typename T, typename G>
CLIPRT_DEVICE void layernorm_forward_rows(const T* __restrict__ x, const T* __restrict__ gamma,
                                          const T* __restrict__ beta, T* __restrict__ y, float* __restrict__ mean,
                                          float* __restrict__ rstd, u64 rows, u64 cols, float eps, float* red) {
    constexpr int W = PackOf<T>::value;
    const float n = (float)cols;
    const bool params_aligned = is_aligned(gamma, 16) && is_aligned(beta, 16);
    for (u64 row = G::first_row(); row < rows; row += G::row_stride()) {
        const T* xr = x + row * cols;
        T* yr = y + row * cols;
        const bool packed = params_aligned && is_aligned(xr, 16) && is_aligned(yr, 16);
        float s = 0.0f;
        row_for_each<W>(cols, packed, G::rank(), G::size(), [&](auto w, u64 j) {
            constexpr int N = decltype(w)::value;
            float v[N];
            load_n<N>(xr + j, v);
#pragma unroll
            for (int k = 0; k < N; ++k) s += v[k];
        });
        const float mu = G::sum(s, red) / n;
        float q = 0.0f;
        row_for_each<W>(cols, packed, G::rank(), G::size(), [&](auto w, u64 j) {
            constexpr int N = decltype(w)::value;
            float v[N];
            load_n<N>(xr + j, v);
#pragma unroll
            for (int k = 0; k < N; ++k) {
                const float d = v[k] - mu;
                q = fmaf(d, d, q);
            }
        });
        const float r = 1.0f / sqrtf(G::sum(q, red) / n + eps);
        row_for_each<W>(cols, packed, G::rank(), G::size(), [&](auto w, u64 j) {
            constexpr int N = decltype(w)::value;
            float v[N], g[N], b[N];
            load_n<N>(xr + j, v);
            load_n<N>(gamma + j, g);
            load_n<N>(beta + j, b);
#pragma unroll
            for (int k = 0; k < N; ++k) v[k] = fmaf((v[k] - mu) * r, g[k], b[k]);
            store_n<N>(yr + j, v);
        });
        if (G::rank() == 0) {
            mean[row] = mu;
            rstd[row] = r;
        }
    }
}

// ------------------------------------------------------------------------------------------------ LayerNorm bwd ---
// One block per chunk of LN_ROWS_PER_CHUNK rows (grid-stride over chunks), the whole block on one row at a time.
// `smem` holds 2·cols floats when `use_shared`; otherwise the chunk's sums accumulate in its scratch row directly.
// Each element's accumulator is updated by one thread per row, and consecutive rows are separated by the
// __syncthreads of block_sum, so the accumulators need no atomics; the order per column is rows in order.
template <typename T>
CLIPRT_DEVICE void layernorm_backward_chunks(const T* __restrict__ dy, const T* __restrict__ x,
                                             const T* __restrict__ gamma, const float* __restrict__ mean,
                                             const float* __restrict__ rstd, T* __restrict__ dx,
                                             float* __restrict__ partial, u64 rows, u64 cols, bool use_shared,
                                             float* smem, float* red) {
    constexpr int W = PackOf<T>::value;
    const float n = (float)cols;
    const u64 chunks = (rows + LN_ROWS_PER_CHUNK - 1) / LN_ROWS_PER_CHUNK;
    const bool gamma_aligned = is_aligned(gamma, 16);
    for (u64 c = blockIdx.x; c < chunks; c += gridDim.x) {
        float* out = partial + c * 2 * cols;
        float* acc = use_shared ? smem : out;
        float* acc_g = acc;
        float* acc_b = acc + cols;
        for (u64 j = threadIdx.x; j < 2 * cols; j += blockDim.x) acc[j] = 0.0f;
        __syncthreads();
        const u64 end = (c + 1) * LN_ROWS_PER_CHUNK < rows ? (c + 1) * LN_ROWS_PER_CHUNK : rows;
        for (u64 row = c * LN_ROWS_PER_CHUNK; row < end; ++row) {
            const T* dyr = dy + row * cols;
            const T* xr = x + row * cols;
            T* dxr = dx + row * cols;
            const float mu = mean[row];
            const float r = rstd[row];
            const bool packed = gamma_aligned && is_aligned(dyr, 16) && is_aligned(xr, 16) && is_aligned(dxr, 16);
            float sg = 0.0f, sgx = 0.0f;
            row_for_each<W>(cols, packed, threadIdx.x, blockDim.x, [&](auto w, u64 j) {
                constexpr int N = decltype(w)::value;
                float d[N], v[N], ga[N];
                load_n<N>(dyr + j, d);
                load_n<N>(xr + j, v);
                load_n<N>(gamma + j, ga);
#pragma unroll
                for (int k = 0; k < N; ++k) {
                    const float xh = (v[k] - mu) * r;
                    const float g = d[k] * ga[k];
                    sg += g;
                    sgx = fmaf(g, xh, sgx);
                    acc_g[j + k] = fmaf(d[k], xh, acc_g[j + k]);
                    acc_b[j + k] += d[k];
                }
            });
            const float mean_g = block_sum(sg, red) / n;
            const float mean_gx = block_sum(sgx, red) / n;
            row_for_each<W>(cols, packed, threadIdx.x, blockDim.x, [&](auto w, u64 j) {
                constexpr int N = decltype(w)::value;
                float d[N], v[N], ga[N];
                load_n<N>(dyr + j, d);
                load_n<N>(xr + j, v);
                load_n<N>(gamma + j, ga);
#pragma unroll
                for (int k = 0; k < N; ++k) {
                    const float xh = (v[k] - mu) * r;
                    const float g = d[k] * ga[k];
                    d[k] = r * (g - mean_g - xh * mean_gx);
                }
                store_n<N>(dxr + j, d);
            });
        }
        __syncthreads();
        if (use_shared) {
            for (u64 j = threadIdx.x; j < 2 * cols; j += blockDim.x) out[j] = acc[j];
        }
        __syncthreads();  // acc is zeroed again by the next chunk
    }
}

// dγ[j] += Σ_c partial[c, j],  dβ[j] += Σ_c partial[c, cols + j], chunks in order; one thread per parameter.
extern "C" __global__ void layernorm_backward_reduce(const float* __restrict__ partial, float* __restrict__ dgamma,
                                                     float* __restrict__ dbeta, u64 chunks, u64 cols) {
    GRID_STRIDE_LOOP(j, 2 * cols) {
        float t = 0.0f;
        for (u64 c = 0; c < chunks; ++c) t += partial[c * 2 * cols + j];
        if (j < cols) {
            dgamma[j] += t;
        } else {
            dbeta[j - cols] += t;
        }
    }
}

// ------------------------------------------------------------------------------------------------ L2 norm ---------
template <typename T, typename G>
CLIPRT_DEVICE void l2norm_forward_rows(const T* __restrict__ x, T* __restrict__ y, float* __restrict__ norms,
                                       u64 rows, u64 cols, float* red) {
    constexpr int W = PackOf<T>::value;
    for (u64 row = G::first_row(); row < rows; row += G::row_stride()) {
        const T* xr = x + row * cols;
        T* yr = y + row * cols;
        const bool packed = is_aligned(xr, 16) && is_aligned(yr, 16);
        float q = 0.0f;
        row_for_each<W>(cols, packed, G::rank(), G::size(), [&](auto w, u64 j) {
            constexpr int N = decltype(w)::value;
            float v[N];
            load_n<N>(xr + j, v);
#pragma unroll
            for (int k = 0; k < N; ++k) q = fmaf(v[k], v[k], q);
        });
        const float norm = sqrtf(G::sum(q, red));
        const float d = fmaxf(norm, L2_EPS);
        row_for_each<W>(cols, packed, G::rank(), G::size(), [&](auto w, u64 j) {
            constexpr int N = decltype(w)::value;
            float v[N];
            load_n<N>(xr + j, v);
#pragma unroll
            for (int k = 0; k < N; ++k) v[k] = v[k] / d;
            store_n<N>(yr + j, v);
        });
        if (G::rank() == 0) norms[row] = norm;
    }
}

template <typename T, typename G>
CLIPRT_DEVICE void l2norm_backward_rows(const T* __restrict__ dy, const T* __restrict__ y,
                                        const float* __restrict__ norms, T* __restrict__ dx, u64 rows, u64 cols,
                                        float* red) {
    constexpr int W = PackOf<T>::value;
    for (u64 row = G::first_row(); row < rows; row += G::row_stride()) {
        const T* dyr = dy + row * cols;
        const T* yr = y + row * cols;
        T* dxr = dx + row * cols;
        const bool packed = is_aligned(dyr, 16) && is_aligned(yr, 16) && is_aligned(dxr, 16);
        const float norm = norms[row];
        // Uniform per row: every thread of the group takes the same branch (block_sum is only reached by all).
        if (norm < L2_EPS) {
            row_for_each<W>(cols, packed, G::rank(), G::size(), [&](auto w, u64 j) {
                constexpr int N = decltype(w)::value;
                float d[N];
                load_n<N>(dyr + j, d);
#pragma unroll
                for (int k = 0; k < N; ++k) d[k] = d[k] / L2_EPS;
                store_n<N>(dxr + j, d);
            });
            continue;
        }
        float dot = 0.0f;
        row_for_each<W>(cols, packed, G::rank(), G::size(), [&](auto w, u64 j) {
            constexpr int N = decltype(w)::value;
            float d[N], v[N];
            load_n<N>(dyr + j, d);
            load_n<N>(yr + j, v);
#pragma unroll
            for (int k = 0; k < N; ++k) dot = fmaf(d[k], v[k], dot);
        });
        dot = G::sum(dot, red);
        row_for_each<W>(cols, packed, G::rank(), G::size(), [&](auto w, u64 j) {
            constexpr int N = decltype(w)::value;
            float d[N], v[N];
            load_n<N>(dyr + j, d);
            load_n<N>(yr + j, v);
#pragma unroll
            for (int k = 0; k < N; ++k) d[k] = (d[k] - v[k] * dot) / norm;
            store_n<N>(dxr + j, d);
        });
    }
}

// ------------------------------------------------------------------------------------------------ entry points ----
// `wide` != 0: one block per row (BlockRows), else one warp per row (WarpRows); the launcher picks it from cols.
#define NORM_KERNELS(suffix, T)                                                                                    \
    extern "C" __global__ void layernorm_forward_##suffix(const T* x, const T* gamma, const T* beta, T* y,         \
                                                          float* mean, float* rstd, u64 rows, u64 cols, float eps, \
                                                          int wide) {                                              \
        __shared__ float red[32];                                                                                  \
        if (wide) {                                                                                                \
            layernorm_forward_rows<T, BlockRows>(x, gamma, beta, y, mean, rstd, rows, cols, eps, red);             \
        } else {                                                                                                   \
            layernorm_forward_rows<T, WarpRows>(x, gamma, beta, y, mean, rstd, rows, cols, eps, red);              \
        }                                                                                                          \
    }                                                                                                              \
    extern "C" __global__ void layernorm_backward_##suffix(const T* dy, const T* x, const T* gamma,               \
                                                           const float* mean, const float* rstd, T* dx,            \
                                                           float* partial, u64 rows, u64 cols, int use_shared) {   \
        __shared__ float red[32];                                                                                  \
        extern __shared__ float smem[];                                                                            \
        layernorm_backward_chunks<T>(dy, x, gamma, mean, rstd, dx, partial, rows, cols, use_shared != 0, smem,    \
                                     red);                                                                         \
    }                                                                                                              \
    extern "C" __global__ void l2norm_forward_##suffix(const T* x, T* y, float* norms, u64 rows, u64 cols,         \
                                                       int wide) {                                                 \
        __shared__ float red[32];                                                                                  \
        if (wide) {                                                                                                \
            l2norm_forward_rows<T, BlockRows>(x, y, norms, rows, cols, red);                                       \
        } else {                                                                                                   \
            l2norm_forward_rows<T, WarpRows>(x, y, norms, rows, cols, red);                                        \
        }                                                                                                          \
    }                                                                                                              \
    extern "C" __global__ void l2norm_backward_##suffix(const T* dy, const T* y, const float* norms, T* dx,       \
                                                        u64 rows, u64 cols, int wide) {                            \
        __shared__ float red[32];                                                                                  \
        if (wide) {                                                                                                \
            l2norm_backward_rows<T, BlockRows>(dy, y, norms, dx, rows, cols, red);                                 \
        } else {                                                                                                   \
            l2norm_backward_rows<T, WarpRows>(dy, y, norms, dx, rows, cols, red);                                  \
        }                                                                                                          \
    }

NORM_KERNELS(f32, float)
NORM_KERNELS(bf16, bf16)
