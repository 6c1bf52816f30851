// Block-level similarity tile: one thread block computes S[BM×BN] = X[r0..r0+BM, :] · Y[c0..c0+BN, :]ᵀ over the whole
// k = 0..dim, fp32 accumulation in registers. Shared by the fused kernels that score one batch against another and
// reduce the scores in the same pass (nn_queue: running top-k over keys; clip_loss: softmax statistics over rows and
// columns), so that the B×K score matrix never reaches global memory.
//
// Operands: X [rows, dim] and Y [cols, dim], row-major with explicit row strides ldx / ldy (elements). Rows of X at or
// beyond `rows`, rows of Y at or beyond `cols` and k at or beyond `dim` read as zero, so any shape works and the
// padded scores are exactly 0 (the epilogue must still skip them: a 0 is a valid score).
//
// k loop: chunks of 64 bytes of k per operand row (32 bf16/f16 or 16 f32) are staged in shared memory, two stages:
// while the block computes on one stage, each thread holds the next chunk in registers (global loads in flight) and
// stores it into the other stage afterwards; one __syncthreads per chunk. 16-byte vector loads when the operand base
// is 16-byte aligned and the row stride is a multiple of 16 bytes (a vector that would cross `dim` is read element by
// element), scalar loads otherwise. Plain loads only (no cp.async), so the CPU emulator runs exactly this code. Shared
// rows are 80 bytes (64 + 16 of padding): the mma fragment loads below (8 rows × 4 consecutive words per warp) and
// the fp32 path's 16-byte row reads then hit 32 distinct banks.
//
// bf16 / f16: mma.sync.m16n8k16 through kernels/mma.cuh. f32 (the parity mode): fp32 FMAs on CUDA cores, k in
// ascending order, with the SAME element ownership, so an epilogue is written once for every dtype.
//
// Ownership (the C-fragment layout of mma.cuh, tiled): the block's warps form a WARPS_M × WARPS_N grid,
// warp = threadIdx.x / 32, warp_m = warp / WARPS_N, warp_n = warp % WARPS_N; each warp owns a WTM × WTN sub-tile made
// of MI × NI mma tiles (16 × 8). In a warp, lane = 4·g + t (g = lane / 4, t = lane % 4). A thread owns
//     acc[mi][ni][2·h + j]  =  S[local_row(mi, h)][local_col(ni, j)],  mi < MI, ni < NI, h < 2, j < 2,
//     local_row(mi, h) = warp_m·WTM + 16·mi + 8·h + g,     local_col(ni, j) = warp_n·WTN + 8·ni + 2·t + j,
// i.e. 2·MI rows × 2·NI columns (MI·NI·4 values).
// - A ROW is shared by the 4 lanes of a quad (same g: combine with __shfl_xor_sync offsets 1 and 2) and by the
//   WARPS_N warps with the same warp_m (combine through shared memory, e.g. [WARPS_N][BM] partials).
// - A COLUMN is shared by the 8 lanes with the same t (shfl_xor offsets 4, 8 and 16), inside the thread by mi and h,
//   and by the WARPS_M warps with the same warp_n (shared memory).
// Summation order inside one score is fixed (k ascending within each mma / FMA chain), so results are deterministic.
//
// Configurations: SimTile128x128 (2×4 warps, 256 threads, warp tile 64×32, 64 accumulators per thread, 40 KB of
// shared memory) for the big products; SimTile64x64 (2×2 warps, 128 threads, warp tile 32×32, 32 accumulators,
// 20 KB) for small batches or epilogues that need registers. Both fit the 48 KB default (no opt-in attribute).
//
// Usage (every thread of the block, blockDim.x == THREADS, uniform control flow: compute() has __syncthreads):
//     extern __shared__ __align__(16) unsigned char smem[];          // >= Tile::SMEM_BYTES
//     SimTile<bf16, SimTile128x128> tile;
//     tile.compute(x, ldx, rows, r0, y, ldy, cols, c0, dim, smem);
//     tile.for_each([&](int lr, int lc, float s) { ... S[r0 + lr][c0 + lc] = s ... });
// compute() starts by writing the shared stages and ends with a __syncthreads after its last read, so the smem is
// free for the epilogue when it returns; an epilogue that uses the same smem must __syncthreads before the next
// compute(). (dim ≤ 0: zeros, and neither shared memory nor a barrier is touched.)
#pragma once

#include "mma.cuh"

template <int BM_, int BN_, int WARPS_M_, int WARPS_N_>
struct SimTileShape {
    static constexpr int BM = BM_;
    static constexpr int BN = BN_;
    static constexpr int WARPS_M = WARPS_M_;
    static constexpr int WARPS_N = WARPS_N_;
    static constexpr int WARPS = WARPS_M * WARPS_N;
    static constexpr int THREADS = 32 * WARPS;
    static constexpr int WTM = BM / WARPS_M;  // rows of a warp's sub-tile
    static constexpr int WTN = BN / WARPS_N;  // columns of a warp's sub-tile
    static constexpr int MI = WTM / 16;       // mma tiles along rows per warp
    static constexpr int NI = WTN / 8;        // mma tiles along columns per warp
    static constexpr int CHUNK_BYTES = 64;    // k bytes per operand row per stage
    static constexpr int ROW_BYTES = 80;      // shared row: the chunk + 16 bytes of padding
    static constexpr int STAGE_BYTES = (BM + BN) * ROW_BYTES;
    static constexpr int SMEM_BYTES = 2 * STAGE_BYTES;
    static_assert(BM % (16 * WARPS_M) == 0 && BN % (8 * WARPS_N) == 0, "warp tiles must be whole mma tiles");
    static_assert((BM * 4) % THREADS == 0 && (BN * 4) % THREADS == 0, "stage loads must split evenly");
};

typedef SimTileShape<128, 128, 2, 4> SimTile128x128;
typedef SimTileShape<64, 64, 2, 2> SimTile64x64;

template <typename T>
struct SimTileIsF32 {
    static constexpr bool value = false;
};
template <>
struct SimTileIsF32<float> {
    static constexpr bool value = true;
};

template <typename T, typename Shape>
struct SimTile {
    typedef Shape S;
    static constexpr int THREADS = S::THREADS;
    static constexpr int SMEM_BYTES = S::SMEM_BYTES;
    static constexpr int V = 16 / (int)sizeof(T);                  // elements per 16-byte vector
    static constexpr int BK = S::CHUNK_BYTES / (int)sizeof(T);     // k per stage
    static constexpr int LDS = S::ROW_BYTES / (int)sizeof(T);      // shared row stride, elements
    static constexpr int SEGS = S::CHUNK_BYTES / 16;               // vectors per row per stage (4)
    static constexpr int X_LOADS = S::BM * SEGS / S::THREADS;      // vectors per thread per stage
    static constexpr int Y_LOADS = S::BN * SEGS / S::THREADS;
    static_assert(SimTileIsF32<T>::value || sizeof(T) == 2, "bf16, f16 or f32");
    static_assert(SimTileIsF32<T>::value || BK % 16 == 0, "whole mma k-steps per stage");

    float acc[S::MI][S::NI][4];
    int lane, warp_m, warp_n;

    CLIPRT_DEVICE SimTile() {
        const int tid = threadIdx.x;
        lane = tid & 31;
        warp_m = (tid >> 5) / S::WARPS_N;
        warp_n = (tid >> 5) % S::WARPS_N;
    }

    // Tile-local row / column of acc[mi][ni][2h + j] (see the ownership rule above).
    CLIPRT_DEVICE int local_row(int mi, int h) const { return warp_m * S::WTM + 16 * mi + 8 * h + (lane >> 2); }
    CLIPRT_DEVICE int local_col(int ni, int j) const { return warp_n * S::WTN + 8 * ni + 2 * (lane & 3) + j; }

    // f(local_row, local_col, value) for every score this thread owns, in a fixed order (mi, h, ni, j).
    template <typename F>
    CLIPRT_DEVICE void for_each(F&& f) const {
#pragma unroll
        for (int mi = 0; mi < S::MI; ++mi)
#pragma unroll
            for (int h = 0; h < 2; ++h)
#pragma unroll
                for (int ni = 0; ni < S::NI; ++ni)
#pragma unroll
                    for (int j = 0; j < 2; ++j) f(local_row(mi, h), local_col(ni, j), acc[mi][ni][2 * h + j]);
    }

    // S = X[r0.., :]·Y[c0.., :]ᵀ into acc (overwritten). dim = 0 gives zeros without touching smem. `smem`: at least
    // SMEM_BYTES, 16-byte aligned. Every thread of the block must call it with the same arguments.
    CLIPRT_DEVICE void compute(const T* x, u64 ldx, u64 rows, u64 r0, const T* y, u64 ldy, u64 cols, u64 c0, int dim,
                               unsigned char* smem) {
#pragma unroll
        for (int mi = 0; mi < S::MI; ++mi)
#pragma unroll
            for (int ni = 0; ni < S::NI; ++ni)
#pragma unroll
                for (int e = 0; e < 4; ++e) acc[mi][ni][e] = 0.0f;
        if (dim <= 0) return;
        const bool x_vec = is_aligned(x, 16) && (ldx * sizeof(T)) % 16 == 0;
        const bool y_vec = is_aligned(y, 16) && (ldy * sizeof(T)) % 16 == 0;
        const int chunks = (dim + BK - 1) / BK;
        Pack<T, V> rx[X_LOADS], ry[Y_LOADS];
        load_stage<X_LOADS>(x, ldx, rows, r0, x_vec, dim, 0, rx);
        load_stage<Y_LOADS>(y, ldy, cols, c0, y_vec, dim, 0, ry);
        store_stage<X_LOADS>(smem, rx);
        store_stage<Y_LOADS>(smem + S::BM * S::ROW_BYTES, ry);
        __syncthreads();
        for (int c = 0; c < chunks; ++c) {
            const bool more = c + 1 < chunks;
            if (more) {
                load_stage<X_LOADS>(x, ldx, rows, r0, x_vec, dim, (c + 1) * BK, rx);
                load_stage<Y_LOADS>(y, ldy, cols, c0, y_vec, dim, (c + 1) * BK, ry);
            }
            const unsigned char* stage = smem + (c & 1) * S::STAGE_BYTES;
            multiply(reinterpret_cast<const T*>(stage), reinterpret_cast<const T*>(stage + S::BM * S::ROW_BYTES));
            if (more) {
                // The other stage was last read in iteration c - 1, before the barrier that ended it.
                unsigned char* next = smem + ((c + 1) & 1) * S::STAGE_BYTES;
                store_stage<X_LOADS>(next, rx);
                store_stage<Y_LOADS>(next + S::BM * S::ROW_BYTES, ry);
            }
            __syncthreads();
        }
    }

   private:
    // This thread's vectors of one operand's chunk [k0, k0 + BK) for tile rows 0..R: vector v = tid + i·THREADS is
    // tile row v / SEGS, elements k0 + V·(v % SEGS) ..; zero beyond `n` rows or `dim`.
    template <int LOADS>
    CLIPRT_DEVICE void load_stage(const T* p, u64 ld, u64 n, u64 first, bool vec, int dim, int k0,
                                  Pack<T, V> (&r)[LOADS]) const {
        const T zero = from_float<T>(0.0f);
#pragma unroll
        for (int i = 0; i < LOADS; ++i) {
            const int v = (int)threadIdx.x + i * S::THREADS;
            const u64 row = first + (u64)(v / SEGS);
            const int k = k0 + V * (v % SEGS);
            if (row < n && vec && k + V <= dim) {
                r[i] = *reinterpret_cast<const Pack<T, V>*>(p + row * ld + (u64)k);
            } else {
#pragma unroll
                for (int e = 0; e < V; ++e) r[i].v[e] = (row < n && k + e < dim) ? p[row * ld + (u64)(k + e)] : zero;
            }
        }
    }

    template <int LOADS>
    CLIPRT_DEVICE void store_stage(unsigned char* base, const Pack<T, V> (&r)[LOADS]) const {
#pragma unroll
        for (int i = 0; i < LOADS; ++i) {
            const int v = (int)threadIdx.x + i * S::THREADS;
            *reinterpret_cast<Pack<T, V>*>(base + (v / SEGS) * S::ROW_BYTES + 16 * (v % SEGS)) = r[i];
        }
    }

    // acc += Xs·Ysᵀ over one stage (BK values of k).
    CLIPRT_DEVICE void multiply(const T* xs, const T* ys) {
        if constexpr (SimTileIsF32<T>::value) {
#pragma unroll
            for (int k = 0; k < BK; k += 4) {
                Pack<float, 4> xv[S::MI][2], yv[S::NI][2];
#pragma unroll
                for (int mi = 0; mi < S::MI; ++mi)
#pragma unroll
                    for (int h = 0; h < 2; ++h)
                        xv[mi][h] = *reinterpret_cast<const Pack<float, 4>*>(xs + local_row(mi, h) * LDS + k);
#pragma unroll
                for (int ni = 0; ni < S::NI; ++ni)
#pragma unroll
                    for (int j = 0; j < 2; ++j)
                        yv[ni][j] = *reinterpret_cast<const Pack<float, 4>*>(ys + local_col(ni, j) * LDS + k);
#pragma unroll
                for (int mi = 0; mi < S::MI; ++mi)
#pragma unroll
                    for (int ni = 0; ni < S::NI; ++ni)
#pragma unroll
                        for (int h = 0; h < 2; ++h)
#pragma unroll
                            for (int j = 0; j < 2; ++j) {
                                float a = acc[mi][ni][2 * h + j];
#pragma unroll
                                for (int e = 0; e < 4; ++e) a = fmaf(xv[mi][h].v[e], yv[ni][j].v[e], a);
                                acc[mi][ni][2 * h + j] = a;
                            }
            }
        } else {
#pragma unroll
            for (int kk = 0; kk < BK; kk += 16) {
                uint32_t a[S::MI][4], b[S::NI][2];
#pragma unroll
                for (int mi = 0; mi < S::MI; ++mi)
                    load_a_rowmajor<T>(xs + (warp_m * S::WTM + 16 * mi) * LDS + kk, LDS, lane, a[mi]);
#pragma unroll
                for (int ni = 0; ni < S::NI; ++ni)
                    load_b_from_rows<T>(ys + (warp_n * S::WTN + 8 * ni) * LDS + kk, LDS, lane, b[ni]);
#pragma unroll
                for (int mi = 0; mi < S::MI; ++mi)
#pragma unroll
                    for (int ni = 0; ni < S::NI; ++ni) mma_16816(acc[mi][ni], a[mi], b[ni], T());
            }
        }
    }
};
