// The fused CLIP loss (SPEC §1.1, issue #6): cosine-similarity softmax cross-entropy over x [rows, dim] (queries,
// images) and y [cols, dim] (keys, texts), forward and backward, without ever holding the rows×cols matrix.
// Launchers and the host-side loop over bands / blocks: src/backend/cuda/clip_loss.rs. CPU reference:
// src/backend/cpu/loss.rs (same semantics, materialised).
//
// Maths. r_i = 1/max(‖x_i‖, 1e-12), r'_j likewise (F.normalize), s = exp(t) read on the device from log_scale[0].
//   Λ_ij = s·r_i·r'_j·⟨x_i, y_j⟩: the normalisation is applied to RAW dot products in the tile epilogue, so no
//   normalised copy of x or y exists. Row i's positive is column row_offset + i; targets (1−ε)·onehot + ε/classes.
//   L = w_r/rows·Σ_i CE_row(i) + w_c/cols·Σ_j CE_col(j),  CE = (1−ε)(lse − Λ_pos) + ε(lse − mean).
//   G = dloss·dΛ = a·(P − Y_r) + b·(Q − Y_c), a = dloss·w_r/rows, b = dloss·w_c/cols, P/Q the row/column softmax
//   rebuilt from the saved log-sum-exps. With E_ij = G_ij·s·r_i·r'_j and ρ_i = Σ_j G_ij·Λ_ij, ρ'_j = Σ_i G_ij·Λ_ij:
//     dx̂_i = s·Σ_j G_ij·ŷ_j,  ⟨dx̂_i, x̂_i⟩ = ρ_i,  dx_i = r_i(dx̂_i − ρ_i·x̂_i) = (E·Y)_i − r_i²·ρ_i·x_i
//   (= (E·Y)_i alone where the norm was clamped: F.normalize divides by the constant 1e-12 there), likewise
//   dy_j = (Eᵀ·X)_j − r'_j²·ρ'_j·y_j, and dt = Σ_ij G_ij·Λ_ij = Σ_i ρ_i.
//
// Passes (the host loops; every kernel below is one step):
//   norms       clip_row_norms: ‖x_i‖, ‖y_j‖ (saved).
//   forward     for each band of rows: clip_fwd_tile (one 128×128 tile of dots per block, on the tensor cores for
//               bf16; epilogue: per tile each row's (max, Σexp, ΣΛ) over the tile's columns and each column's over
//               the tile's rows, and the positive logit), clip_row_merge (row partials in column-tile order → row
//               lse (saved), row CE), clip_col_merge (the band's column partials folded, in row-tile order, into
//               running column statistics). Then clip_col_finish (column lse (saved), column CE) and clip_loss_sum.
//   backward    for each block of Ra rows, for each block of Cb columns: clip_bwd_tile (recomputes each tile once,
//               writes E [Ra, Cb] in the activation dtype and per-tile ρ / ρ' partials), clip_fold_sums (ρ, ρ' in tile
//               order, then block order), cuBLASLt A_x[Ra] (+)= E·Y[Cb] and A_y[Cb] (+)= Eᵀ·X[Ra] (fp32, beta = 1
//               after the first block; the second is skipped without dtext); after the row block clip_grad_finish
//               writes dx; after all blocks clip_grad_finish writes dy and clip_dt_sum adds Σρ to dt.
//
// Floors (N = rows = cols, D = dim, bf16). FLOPs: forward one N×N×D product (2N²D), backward one (recompute) plus
//   two (E·Y, Eᵀ·X): 4·2N²D in all = 4.4 TFLOP at N = 32k, D = 512 (≈ 5.6 ms if cuBLASLt reached an assumed ~790
//   bf16 TFLOP/s on an H100; nothing was measured here: the bench measures the rate in the same run). Bytes: x, y read once per
//   tile row / column of a pass (L2-resident: the operands are 2ND = 64 MB at 32k), E written and read twice per
//   block (2·Ra·Cb bytes ×3, in L2 for Ra = Cb = 4096: 32 MB), partials O(N²/128) floats; no N² term reaches DRAM
//   beyond E's spill when L2 is smaller than E. Exponentials: 2N² forward (row and column maxima differ) + 2N²
//   backward (P and Q), on the SFU beside the tensor cores.
// Extra memory (besides the 2·(rows + cols) saved floats): forward partials ≤ the band budget (32 MB) + O(rows +
//   cols); backward E (2·Ra·Cb bytes bf16), A_x (4·Ra·D), A_y (4·cols·D, only with dtext), ρ partials O(Ra + Cb)·Cb/128.
//
// Launch configuration: tile kernels grid (column tiles, row tiles) of the band / block, 256 threads (8 warps),
//   66,048 B of dynamic shared memory (the 128×129 fp32 tile of dots; sim_tile's 40 KB double-buffered staging
//   aliases it), opted in above 48 KB by the launcher. The tile of dots is kernels/sim_tile.cuh's SimTile128x128:
//   warp w owns rows 64·(w/4)..+64 and columns 32·(w%4)..+32 (4×4 m16n8k16 accumulators, 64 fp32 registers), k in
//   64-byte chunks double-buffered through shared memory; f32 (parity mode) is its CUDA-core fp32 FMA path, never
//   TF32. __launch_bounds__(256, 2) for bf16, (256, 1) for f32. The epilogue reads the tile back from shared memory
//   (2 threads per row and 2 per column, 64 entries each; odd row stride, so both walks are conflict-free).
//   Merges / finishes: one thread per row or column, 256-thread blocks, grid-stride. Sums: one 1024-thread block.
//
// Determinism: no atomics. Every partial has one writer; merges run in tile order, then band / block order; the
// loss and dt are one block's fixed-order sums. The order depends on the shapes and the band / block sizes only.
#include "common.cuh"
// mma.cuh before sim_tile.cuh: the CPU emulator substitutes its own mma.cuh here.
#include "mma.cuh"
#include "sim_tile.cuh"

#define CLIP_EPS 1e-12f
// Tile edge (rows = columns). Must match TILE in src/backend/cuda/clip_loss.rs.
#define CLIP_TILE 128
// Row stride of the fp32 tile of dots in shared memory (odd: column walks are conflict-free).
#define CLIP_SLD 129
#define CLIP_THREADS 256

CLIPRT_DEVICE float clip_neg_inf() { return __int_as_float(0xff800000); }

// (m, e) ← (m, e) ⊕ (m2, e2) for log-sum-exp states; (−∞, 0) is the empty state.
CLIPRT_DEVICE void lse_combine(float& m, float& e, float m2, float e2) {
    const float M = fmaxf(m, m2);
    if (M == clip_neg_inf()) return;
    const float a = (m == clip_neg_inf()) ? 0.0f : e * expf(m - M);
    const float b = (m2 == clip_neg_inf()) ? 0.0f : e2 * expf(m2 - M);
    m = M;
    e = a + b;
}

CLIPRT_DEVICE float inv_norm(float norm) { return 1.0f / fmaxf(norm, CLIP_EPS); }

// ------------------------------------------------------------------------------------------------ norms ----------
// norms[i] = ‖x_i‖ (unclamped, as the CPU saves it). One warp per row, lanes stride the row, warp tree sum.
template <typename T>
CLIPRT_DEVICE void row_norms(const T* __restrict__ x, float* __restrict__ norms, u64 rows, u64 dim) {
    const unsigned lane = threadIdx.x & 31;
    const u64 warps = (u64)gridDim.x * (blockDim.x >> 5);
    for (u64 i = (u64)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5); i < rows; i += warps) {
        const T* r = x + i * dim;
        float acc = 0.0f;
        for (u64 k = lane; k < dim; k += 32) {
            const float v = to_float(r[k]);
            acc += v * v;
        }
        acc = warp_sum(acc);
        if (lane == 0) norms[i] = sqrtf(acc);
    }
}

// ------------------------------------------------------------------------------------------------ tile of dots ---
// S[r][c] = ⟨x_r, y_c⟩ (fp32) for the tile's nr ≤ 128 rows of x and nc ≤ 128 rows of y, into shared memory `smem`
// (row stride CLIP_SLD), by kernels/sim_tile.cuh (mma for bf16, fp32 FMAs for f32; its staging uses the first
// 40 KB of smem and is dead when compute() returns). Entries past nr / nc hold 0. Ends with a barrier: S is then
// complete and visible.
template <typename T>
CLIPRT_DEVICE void tile_dot(const T* __restrict__ x, const T* __restrict__ y, int nr, int nc, u64 dim, float* smem) {
    SimTile<T, SimTile128x128> tile;
    tile.compute(x, dim, (u64)nr, 0, y, dim, (u64)nc, 0, (int)dim, reinterpret_cast<unsigned char*>(smem));
    tile.for_each([&](int r, int c, float v) { smem[r * CLIP_SLD + c] = v; });
    __syncthreads();
}

// ------------------------------------------------------------------------------------------------ forward --------
// One band of rows: x points at the band's first row (band_len rows), x_norm at its norms, pos at its positive logits;
// y holds all cols. Block (ct, rt) computes rows rt·128.. of the band against columns ct·128... Partials, (max, Σexp,
// ΣΛ) triples: row_part[(ct·band_len + row)·3], col_part[(rt·cols + col)·3]. The positive of band row i is column
// pos_col0 + i.
template <typename T>
CLIPRT_DEVICE void fwd_tile(const T* __restrict__ x, const T* __restrict__ y, const float* __restrict__ log_scale,
                            const float* __restrict__ x_norm, const float* __restrict__ y_norm,
                            float* __restrict__ row_part, float* __restrict__ col_part, float* __restrict__ pos,
                            u64 band_len, u64 cols, u64 dim, u64 pos_col0) {
    extern __shared__ __align__(16) float smem[];
    __shared__ float rr[CLIP_TILE];
    __shared__ float rc[CLIP_TILE];
    __shared__ float hm[2][CLIP_TILE];
    __shared__ float he[2][CLIP_TILE];
    __shared__ float hs[2][CLIP_TILE];
    __shared__ float cm[2][CLIP_TILE];
    __shared__ float ce[2][CLIP_TILE];
    __shared__ float cs[2][CLIP_TILE];
    const u64 ct = blockIdx.x, rt = blockIdx.y;
    const u64 row0 = rt * CLIP_TILE, col0 = ct * CLIP_TILE;
    const int nr = (int)min((u64)CLIP_TILE, band_len - row0), nc = (int)min((u64)CLIP_TILE, cols - col0);
    const int tid = threadIdx.x;
    tile_dot(x + row0 * dim, y + col0 * dim, nr, nc, dim, smem);
    const float s = expf(log_scale[0]);
    if (tid < CLIP_TILE) rr[tid] = tid < nr ? s * inv_norm(x_norm[row0 + tid]) : 0.0f;
    else rc[tid - CLIP_TILE] = tid - CLIP_TILE < nc ? inv_norm(y_norm[col0 + tid - CLIP_TILE]) : 0.0f;
    __syncthreads();
    for (int q = tid; q < CLIP_TILE * CLIP_TILE; q += CLIP_THREADS) {
        const int r = q >> 7, c = q & (CLIP_TILE - 1);
        if (r < nr && c < nc) {
            const float l = rr[r] * rc[c] * smem[r * CLIP_SLD + c];
            smem[r * CLIP_SLD + c] = l;
            if (col0 + c == pos_col0 + row0 + r) pos[row0 + r] = l;
        }
    }
    __syncthreads();
    // Each (row, half) over the half's ≤ 64 columns, each (column, half) over the half's ≤ 64 rows: max, then Σexp.
    const int lo = (tid >> 7) * 64, me = tid & (CLIP_TILE - 1), h = tid >> 7;
    if (me < nr) {
        const int hi = min(lo + 64, nc);
        float m = clip_neg_inf(), e = 0.0f, sum = 0.0f;
        for (int c = lo; c < hi; ++c) m = fmaxf(m, smem[me * CLIP_SLD + c]);
        if (m != clip_neg_inf())
            for (int c = lo; c < hi; ++c) {
                const float l = smem[me * CLIP_SLD + c];
                e += expf(l - m);
                sum += l;
            }
        hm[h][me] = m, he[h][me] = e, hs[h][me] = sum;
    }
    if (me < nc) {
        const int hi = min(lo + 64, nr);
        float m = clip_neg_inf(), e = 0.0f, sum = 0.0f;
        for (int r = lo; r < hi; ++r) m = fmaxf(m, smem[r * CLIP_SLD + me]);
        if (m != clip_neg_inf())
            for (int r = lo; r < hi; ++r) {
                const float l = smem[r * CLIP_SLD + me];
                e += expf(l - m);
                sum += l;
            }
        cm[h][me] = m, ce[h][me] = e, cs[h][me] = sum;
    }
    __syncthreads();
    if (tid < CLIP_TILE) {
        if (tid < nr) {
            float m = hm[0][tid], e = he[0][tid];
            lse_combine(m, e, hm[1][tid], he[1][tid]);
            float* p = row_part + (ct * band_len + row0 + tid) * 3;
            p[0] = m, p[1] = e, p[2] = hs[0][tid] + hs[1][tid];
        }
    } else {
        const int c = tid - CLIP_TILE;
        if (c < nc) {
            float m = cm[0][c], e = ce[0][c];
            lse_combine(m, e, cm[1][c], ce[1][c]);
            float* p = col_part + (rt * cols + col0 + c) * 3;
            p[0] = m, p[1] = e, p[2] = cs[0][c] + cs[1][c];
        }
    }
}

// Row statistics of one band: the partials of its col_tiles column tiles in order → row lse (saved) and the row's
// smoothed CE against its positive logit; inv_cols = 1/cols for the mean.
extern "C" __global__ void clip_row_merge(const float* __restrict__ row_part, const float* __restrict__ pos,
                                          float* __restrict__ row_lse, float* __restrict__ row_ce, u64 band_len,
                                          u64 col_tiles, float eps, float inv_cols) {
    GRID_STRIDE_LOOP(i, band_len) {
        float m = clip_neg_inf(), e = 0.0f, sum = 0.0f;
        for (u64 t = 0; t < col_tiles; ++t) {
            const float* p = row_part + (t * band_len + i) * 3;
            lse_combine(m, e, p[0], p[1]);
            sum += p[2];
        }
        const float lse = m + logf(e);
        row_lse[i] = lse;
        row_ce[i] = (1.0f - eps) * (lse - pos[i]) + eps * (lse - sum * inv_cols);
    }
}

// Folds one band's column partials (row_tiles of them, in order) into the running statistics run[(j)·3]; `first`:
// the band is the first (the running state starts empty).
extern "C" __global__ void clip_col_merge(const float* __restrict__ col_part, float* __restrict__ run, u64 cols,
                                          u64 row_tiles, int first) {
    GRID_STRIDE_LOOP(j, cols) {
        float m = clip_neg_inf(), e = 0.0f, sum = 0.0f;
        if (!first) m = run[j * 3], e = run[j * 3 + 1], sum = run[j * 3 + 2];
        for (u64 t = 0; t < row_tiles; ++t) {
            const float* p = col_part + (t * cols + j) * 3;
            lse_combine(m, e, p[0], p[1]);
            sum += p[2];
        }
        run[j * 3] = m, run[j * 3 + 1] = e, run[j * 3 + 2] = sum;
    }
}

// Column lse (saved) and, with a column term (square, no offset: column j's positive is pos[j]), its smoothed CE.
extern "C" __global__ void clip_col_finish(const float* __restrict__ run, const float* __restrict__ pos,
                                           float* __restrict__ col_lse, float* __restrict__ col_ce, u64 cols,
                                           float eps, float inv_rows, int col_term) {
    GRID_STRIDE_LOOP(j, cols) {
        const float lse = run[j * 3] + logf(run[j * 3 + 1]);
        col_lse[j] = lse;
        if (col_term) col_ce[j] = (1.0f - eps) * (lse - pos[j]) + eps * (lse - run[j * 3 + 2] * inv_rows);
    }
}

// Σ x[0..n) in an order fixed by n: thread t adds x[t], x[t + blockDim], … then block_sum's tree.
CLIPRT_DEVICE float ordered_sum(const float* x, u64 n, float* red) {
    float acc = 0.0f;
    for (u64 i = threadIdx.x; i < n; i += blockDim.x) acc += x[i];
    return block_sum(acc, red);
}

// loss[0] = row_scale·Σ row_ce + col_scale·Σ col_ce (the column sum only with col_term). One block.
extern "C" __global__ void clip_loss_sum(const float* row_ce, const float* col_ce, float* loss, u64 rows, u64 cols,
                                         float row_scale, float col_scale, int col_term) {
    __shared__ float red[32];
    float total = row_scale * ordered_sum(row_ce, rows, red);
    if (col_term) total += col_scale * ordered_sum(col_ce, cols, red);
    if (threadIdx.x == 0) loss[0] = total;
}

// ------------------------------------------------------------------------------------------------ backward -------
// One (row block, column block) pair: x, x_norm, row_lse at the row block's first row (blk_rows rows); y, y_norm,
// col_lse at the column block's first column (blk_cols). Writes E[(row)·blk_cols + col] (T) and per-tile partial
// sums of G∘Λ: rho_part[ct·blk_rows + row], rhoc_part[rt·blk_cols + col]. Global indices: row rb0 + row, column
// cb0 + col; row i's target column is row_offset + i, column j's target row is j. consts = a, b, on, off_r, off_c.
template <typename T>
CLIPRT_DEVICE void bwd_tile(const T* __restrict__ x, const T* __restrict__ y, const float* __restrict__ log_scale,
                            const float* __restrict__ x_norm, const float* __restrict__ y_norm,
                            const float* __restrict__ row_lse, const float* __restrict__ col_lse, T* __restrict__ e_out,
                            float* __restrict__ rho_part, float* __restrict__ rhoc_part, u64 blk_rows, u64 blk_cols,
                            u64 dim, u64 rb0, u64 cb0, u64 row_offset, float a, float b, float on, float off_r,
                            float off_c) {
    extern __shared__ __align__(16) float smem[];
    __shared__ float rr[CLIP_TILE];
    __shared__ float rc[CLIP_TILE];
    __shared__ float lr[CLIP_TILE];
    __shared__ float lc[CLIP_TILE];
    __shared__ float hsum[2][CLIP_TILE];
    __shared__ float csum[2][CLIP_TILE];
    const u64 ct = blockIdx.x, rt = blockIdx.y;
    const u64 row0 = rt * CLIP_TILE, col0 = ct * CLIP_TILE;
    const int nr = (int)min((u64)CLIP_TILE, blk_rows - row0), nc = (int)min((u64)CLIP_TILE, blk_cols - col0);
    const int tid = threadIdx.x;
    tile_dot(x + row0 * dim, y + col0 * dim, nr, nc, dim, smem);
    const float s = expf(log_scale[0]);
    if (tid < CLIP_TILE) {
        rr[tid] = tid < nr ? inv_norm(x_norm[row0 + tid]) : 0.0f;
        lr[tid] = tid < nr ? row_lse[row0 + tid] : 0.0f;
    } else {
        const int c = tid - CLIP_TILE;
        rc[c] = c < nc ? inv_norm(y_norm[col0 + c]) : 0.0f;
        lc[c] = c < nc ? col_lse[col0 + c] : 0.0f;
    }
    __syncthreads();
    for (int q = tid; q < CLIP_TILE * CLIP_TILE; q += CLIP_THREADS) {
        const int r = q >> 7, c = q & (CLIP_TILE - 1);
        float gl = 0.0f;
        if (r < nr && c < nc) {
            const float w = s * rr[r] * rc[c];
            const float l = w * smem[r * CLIP_SLD + c];
            const u64 i = rb0 + row0 + r, j = cb0 + col0 + c;
            float g = a * (expf(l - lr[r]) - (j == row_offset + i ? on : off_r));
            if (b != 0.0f) g += b * (expf(l - lc[c]) - (i == j ? on : off_c));
            e_out[(row0 + r) * blk_cols + col0 + c] = from_float<T>(g * w);
            gl = g * l;
        }
        smem[r * CLIP_SLD + c] = gl;
    }
    __syncthreads();
    const int lo = (tid >> 7) * 64, me = tid & (CLIP_TILE - 1), h = tid >> 7;
    float rs = 0.0f, cs = 0.0f;
    for (int k = lo; k < lo + 64; ++k) {
        rs += smem[me * CLIP_SLD + k];
        cs += smem[k * CLIP_SLD + me];
    }
    hsum[h][me] = rs;
    csum[h][me] = cs;
    __syncthreads();
    if (tid < CLIP_TILE) {
        if (tid < nr) rho_part[ct * blk_rows + row0 + tid] = hsum[0][tid] + hsum[1][tid];
    } else {
        const int c = tid - CLIP_TILE;
        if (c < nc) rhoc_part[rt * blk_cols + col0 + c] = csum[0][c] + csum[1][c];
    }
}

// out[k] (+)= Σ_t part[t·len + k], t in order (accumulate: added to out, else out overwritten).
extern "C" __global__ void clip_fold_sums(const float* __restrict__ part, float* __restrict__ out, u64 len,
                                          u64 tiles, int accumulate) {
    GRID_STRIDE_LOOP(k, len) {
        float v = 0.0f;
        for (u64 t = 0; t < tiles; ++t) v += part[t * len + k];
        out[k] = accumulate ? out[k] + v : v;
    }
}

// dx = acc − r²·ρ·x per row (acc = (E·Y) rows, fp32), acc alone where the norm was clamped (F.normalize's backward
// through the constant 1e-12). Element-wise over rows·dim.
template <typename T>
CLIPRT_DEVICE void grad_finish(const float* __restrict__ acc, const T* __restrict__ x, const float* __restrict__ norms,
                               const float* __restrict__ rho, T* __restrict__ dx, u64 rows, u64 dim) {
    GRID_STRIDE_LOOP(q, rows * dim) {
        const u64 i = q / dim;
        const float norm = norms[i];
        float v = acc[q];
        if (norm > CLIP_EPS) {
            const float r = 1.0f / norm;
            v -= r * r * rho[i] * to_float(x[q]);
        }
        dx[q] = from_float<T>(v);
    }
}

// dlog_scale[0] += Σ_i ρ_i (fixed order). One block.
extern "C" __global__ void clip_dt_sum(const float* rho, float* dlog_scale, u64 rows) {
    __shared__ float red[32];
    const float total = ordered_sum(rho, rows, red);
    if (threadIdx.x == 0) dlog_scale[0] += total;
}

#define CLIP_LOSS_KERNELS(T, suffix, MINB)                                                                              \
    extern "C" __global__ void clip_row_norms_##suffix(const T* x, float* norms, u64 rows, u64 dim) {               \
        row_norms<T>(x, norms, rows, dim);                                                                          \
    }                                                                                                               \
    extern "C" __global__ void __launch_bounds__(CLIP_THREADS, MINB)                                                   \
        clip_fwd_tile_##suffix(const T* x, const T* y, const float* log_scale, const float* x_norm,                 \
                               const float* y_norm, float* row_part, float* col_part, float* pos, u64 band_len,     \
                               u64 cols, u64 dim, u64 pos_col0) {                                                   \
        fwd_tile<T>(x, y, log_scale, x_norm, y_norm, row_part, col_part, pos, band_len, cols, dim, pos_col0);       \
    }                                                                                                               \
    extern "C" __global__ void __launch_bounds__(CLIP_THREADS, MINB) clip_bwd_tile_##suffix(                           \
        const T* x, const T* y, const float* log_scale, const float* x_norm, const float* y_norm,                   \
        const float* row_lse, const float* col_lse, T* e_out, float* rho_part, float* rhoc_part, u64 blk_rows,      \
        u64 blk_cols, u64 dim, u64 rb0, u64 cb0, u64 row_offset, float a, float b, float on, float off_r,           \
        float off_c) {                                                                                              \
        bwd_tile<T>(x, y, log_scale, x_norm, y_norm, row_lse, col_lse, e_out, rho_part, rhoc_part, blk_rows,        \
                    blk_cols, dim, rb0, cb0, row_offset, a, b, on, off_r, off_c);                                   \
    }                                                                                                               \
    extern "C" __global__ void clip_grad_finish_##suffix(const float* acc, const T* x, const float* norms,          \
                                                         const float* rho, T* dx, u64 rows, u64 dim) {              \
        grad_finish<T>(acc, x, norms, rho, dx, rows, dim);                                                          \
    }

// f32 (parity mode): sim_tile's fp32 path needs ~250 registers, so one block per SM; bf16: two.
CLIP_LOSS_KERNELS(float, f32, 1)
CLIP_LOSS_KERNELS(bf16, bf16, 2)
