// Fused nearest-neighbour search over DeCLIP's embedding queue (issue #7): for queries Q [B, D] and unit keys
// K [N, D] (the queue), the k ≤ 16 keys of largest cosine per query, best first, WITHOUT writing the B×N scores.
// Semantics of the CPU reference (src/backend/cpu/nn_search.rs) and of Backend::nn_search.
//
// Maths: cos(b, j) = (q_b · k_j) / max(‖q_b‖, 1e-12) (F.normalize's floor; the keys are taken as unit rows). The
// selection order is the strict total order "cosine descending, then index ascending": ties go to the LOWEST index
// and no result depends on which block or thread saw which key (so the split count changes nothing). A NaN cosine
// is never selected; slots no key fills hold (−∞, INT_MAX), the CPU's empty slot.
//
// Floors (B = 4096, N = 65536, D = 512, bf16): 2·B·N·D = 275 GFLOP, ≈ 0.35 ms at the H100's measured cuBLASLt bf16
// rate; minimum bytes = keys N·D·2 (64 MiB) + queries B·D·2 (4 MiB) + outputs B·k·8: ≈ 21 µs at 3.35 TB/s. So the
// search is compute-bound, and the two-pass baseline (GEMM writing B·N fp32 scores = 1 GiB, then reading it back)
// pays ≈ 0.65 ms of pure traffic on top of the GEMM: fusing the selection into the GEMM's epilogue removes it.
//
// Kernels (launch configuration in src/backend/cuda/nn_queue.rs):
// 1. nn_queue_inv_norm_<T>: 1 / max(‖q_b‖, 1e-12) per query, once (a warp per query, fixed summation order). The
//    scores are scaled in the epilogue (fp32), so the tensor cores see the raw query rows.
// 2. nn_queue_top1_<T> (k = 1, batch > 64): grid (⌈B/128⌉ query tiles, S key splits), 256 threads,
//    kernels/sim_tile.cuh SimTile128x128 (40 KB of shared memory). Each block walks the 128-key tiles of its split;
//    after each tile every thread folds the scores it owns into a running best (cosine, index) per owned row, in
//    registers (8 rows per thread); at the end a quad shuffle and a [4 warps][128 rows] shared-memory pass reduce
//    the 16 holders of each row, and the block writes one partial (cosine, index) per query for its split.
// 3. nn_queue_topk_<T> (k > 1, or batch ≤ 64): grid (⌈B/64⌉ query tiles, S splits), 128 threads, SimTile64x64
//    (20 KB) + each thread's private sorted list of k (cosine, index) in shared memory (16 KB at k = 16). After each
//    key tile the scaled scores go to shared memory (aliasing the tile's operand stages, free once the product is
//    done), then two threads per query row scan 32 scores each against their list's last entry (a register copy:
//    almost every score fails it) and insert the rare winners. Each thread writes its list as one partial.
// 4. nn_queue_merge_f32: one warp per query picks the k best of its partial lists (S lists for top1, 2·S for topk) in k
//    rounds of "the best entry strictly after the previous pick", a shuffle tree per round. Deterministic.
// 5. nn_queue_argmax_bf16: not part of the search; the arg-max pass of the two-pass baseline with bf16 scores that
//    `cliprt bench nn-queue` times (a block of 256 threads per score row).
// Splits: S = min(⌈N/BN⌉, ⌈target blocks / query tiles⌉) with whole BN-key tiles per split, so a small batch still
// fills the GPU (B = 1 gets ~2 waves of key splits) and a large batch keeps S small (few partials to merge). The grid
// puts the query tiles on x (fastest), so the blocks that share a split's keys run together and read them from L2.
//
// Why not a sort-based or FAISS-style two-pass: the B×N fp32 scores (1 GiB at the shape above, 16× the keys)
// dominate the two-pass form's traffic; the running top-1 costs one compare-and-select per score, < 1% of the mma
// work.
// Limit of this version: mma.sync with 64×32 warp tiles reads 192 B of fragments from shared memory per m16n8k16
// (4096 FLOP), which caps it near 2/3 of the H100's dense bf16 peak (128 B/clk/SM); cuBLASLt's wgmma does not pay
// that. A wgmma path for sim_tile.cuh is the next step if the measured ratio to the GEMM floor asks for it.
#include <limits.h>

#include "sim_tile.cuh"

// Must match src/backend/cuda/nn_queue.rs.
#define NNQ_MAX_K 16
#define NNQ_TOPK_LISTS_PER_ROW 2

typedef SimTile128x128 NnqTop1Shape;
typedef SimTile64x64 NnqTopkShape;

CLIPRT_DEVICE float nnq_neg_inf() { return __int_as_float(0xff800000); }

// (a, ia) comes before (b, ib): higher cosine, or the same cosine and a lower index. A NaN never comes before
// anything, and the empty slot (−∞, INT_MAX) comes after every real key.
CLIPRT_DEVICE bool nnq_before(float a, int ia, float b, int ib) { return a > b || (a == b && ia < ib); }

// ------------------------------------------------------------------------------------------------ query norms -----
// inv_norm[b] = 1 / max(‖q_b‖, 1e-12); a warp per query (blockDim.x a multiple of 32), lane-strided sums then the
// warp's butterfly: a fixed order.
template <typename T>
CLIPRT_DEVICE void inv_norm_rows(const T* q, float* inv_norm, u64 batch, int dim) {
    const int lane = threadIdx.x & 31;
    const u64 warps = (u64)gridDim.x * (blockDim.x >> 5);
    for (u64 b = (u64)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5); b < batch; b += warps) {
        float ss = 0.0f;
        for (int j = lane; j < dim; j += 32) {
            const float v = to_float(q[b * (u64)dim + (u64)j]);
            ss = fmaf(v, v, ss);
        }
        ss = warp_sum(ss);
        if (lane == 0) inv_norm[b] = 1.0f / fmaxf(sqrtf(ss), 1e-12f);
    }
}

// --------------------------------------------------------------------------------------------------- top-1 --------
// part_sim / part_idx: [batch, splits] (query-major, so the merge reads a query's partials contiguously).
template <typename T>
CLIPRT_DEVICE void top1_block(const T* q, const T* keys, const float* inv_norm, float* part_sim, int* part_idx,
                              u64 batch, u64 num_keys, int dim, u64 keys_per_split) {
    typedef NnqTop1Shape S;
    extern __shared__ __align__(16) unsigned char smem[];
    SimTile<T, S> tile;
    const u64 r0 = (u64)blockIdx.x * S::BM;
    const u64 split = blockIdx.y, splits = gridDim.y;
    const u64 begin = split * keys_per_split;
    const u64 end = min(num_keys, begin + keys_per_split);

    float inv[S::MI][2], best[S::MI][2];
    int best_i[S::MI][2];
#pragma unroll
    for (int mi = 0; mi < S::MI; ++mi)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const u64 row = r0 + (u64)tile.local_row(mi, h);
            inv[mi][h] = row < batch ? inv_norm[row] : 0.0f;
            best[mi][h] = nnq_neg_inf();
            best_i[mi][h] = INT_MAX;
        }

    for (u64 c0 = begin; c0 < end; c0 += S::BN) {
        tile.compute(q, (u64)dim, batch, r0, keys, (u64)dim, end, c0, dim, smem);
        // Columns at or past `end` are zero padding (the tile reads keys only below `end`): skipped here.
#pragma unroll
        for (int mi = 0; mi < S::MI; ++mi)
#pragma unroll
            for (int h = 0; h < 2; ++h)
#pragma unroll
                for (int ni = 0; ni < S::NI; ++ni)
#pragma unroll
                    for (int j = 0; j < 2; ++j) {
                        const u64 col = c0 + (u64)tile.local_col(ni, j);
                        const float v = tile.acc[mi][ni][2 * h + j] * inv[mi][h];
                        if (col < end && nnq_before(v, (int)col, best[mi][h], best_i[mi][h])) {
                            best[mi][h] = v;
                            best_i[mi][h] = (int)col;
                        }
                    }
    }

    // The 4 lanes of a quad share a row.
#pragma unroll
    for (int mi = 0; mi < S::MI; ++mi)
#pragma unroll
        for (int h = 0; h < 2; ++h)
#pragma unroll
            for (int off = 1; off <= 2; off <<= 1) {
                const float ov = __shfl_xor_sync(0xffffffffu, best[mi][h], off);
                const int oi = __shfl_xor_sync(0xffffffffu, best_i[mi][h], off);
                if (nnq_before(ov, oi, best[mi][h], best_i[mi][h])) {
                    best[mi][h] = ov;
                    best_i[mi][h] = oi;
                }
            }
    // Then the WARPS_N warps of a row band, through shared memory: compute() ended with a barrier after its last
    // read of the stages, so they are free.
    float* red_v = reinterpret_cast<float*>(smem);          // [WARPS_N][BM]
    int* red_i = reinterpret_cast<int*>(smem) + S::WARPS_N * S::BM;
    if ((tile.lane & 3) == 0) {
#pragma unroll
        for (int mi = 0; mi < S::MI; ++mi)
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const int lr = tile.local_row(mi, h);
                red_v[tile.warp_n * S::BM + lr] = best[mi][h];
                red_i[tile.warp_n * S::BM + lr] = best_i[mi][h];
            }
    }
    __syncthreads();
    for (int lr = threadIdx.x; lr < S::BM; lr += S::THREADS) {
        const u64 row = r0 + (u64)lr;
        if (row >= batch) continue;
        float v = red_v[lr];
        int i = red_i[lr];
        for (int w = 1; w < S::WARPS_N; ++w) {
            const float ov = red_v[w * S::BM + lr];
            const int oi = red_i[w * S::BM + lr];
            if (nnq_before(ov, oi, v, i)) {
                v = ov;
                i = oi;
            }
        }
        part_sim[row * splits + split] = v;
        part_idx[row * splits + split] = i;
    }
}

// --------------------------------------------------------------------------------------------------- top-k --------
// part_sim / part_idx: [batch, splits · 2, k]. Shared memory: the tile's stages (also the [BM][BN + 4] fp32 scores
// between products), then the lists [k][THREADS] cosines and [k][THREADS] indices (slot-major: conflict-free).
#define NNQ_TOPK_SCORE_LD (NnqTopkShape::BN + 4)

template <typename T>
CLIPRT_DEVICE void topk_block(const T* q, const T* keys, const float* inv_norm, float* part_sim, int* part_idx,
                              u64 batch, u64 num_keys, int dim, u64 keys_per_split, int k) {
    typedef NnqTopkShape S;
    static_assert(S::BM * NNQ_TOPK_SCORE_LD * 4 <= SimTile<T, S>::SMEM_BYTES, "the scores alias the stages");
    static_assert(S::THREADS == S::BM * NNQ_TOPK_LISTS_PER_ROW, "two list owners per query row");
    extern __shared__ __align__(16) unsigned char smem[];
    float* scores = reinterpret_cast<float*>(smem);
    float* list_v = reinterpret_cast<float*>(smem + SimTile<T, S>::SMEM_BYTES);
    int* list_i = reinterpret_cast<int*>(list_v + NNQ_MAX_K * S::THREADS);

    SimTile<T, S> tile;
    const int tid = threadIdx.x;
    const u64 r0 = (u64)blockIdx.x * S::BM;
    const u64 split = blockIdx.y, splits = gridDim.y;
    const u64 begin = split * keys_per_split;
    const u64 end = min(num_keys, begin + keys_per_split);

    // This thread's list: query row `my_row` of the tile, score columns my_half·BN/2 .. of each key tile.
    const int my_row = tid / NNQ_TOPK_LISTS_PER_ROW;
    const int my_half = tid % NNQ_TOPK_LISTS_PER_ROW;
    constexpr int SCAN = S::BN / NNQ_TOPK_LISTS_PER_ROW;
    for (int s = 0; s < k; ++s) {
        list_v[s * S::THREADS + tid] = nnq_neg_inf();
        list_i[s * S::THREADS + tid] = INT_MAX;
    }
    float last_v = nnq_neg_inf();  // register copy of the list's entry k − 1
    int last_i = INT_MAX;

    float inv[S::MI][2];
#pragma unroll
    for (int mi = 0; mi < S::MI; ++mi)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const u64 row = r0 + (u64)tile.local_row(mi, h);
            inv[mi][h] = row < batch ? inv_norm[row] : 0.0f;
        }

    for (u64 c0 = begin; c0 < end; c0 += S::BN) {
        tile.compute(q, (u64)dim, batch, r0, keys, (u64)dim, end, c0, dim, smem);
        // compute() ended with a barrier after its last read of the stages: the scores may overwrite them.
#pragma unroll
        for (int mi = 0; mi < S::MI; ++mi)
#pragma unroll
            for (int h = 0; h < 2; ++h)
#pragma unroll
                for (int ni = 0; ni < S::NI; ++ni)
#pragma unroll
                    for (int j = 0; j < 2; ++j)
                        scores[tile.local_row(mi, h) * NNQ_TOPK_SCORE_LD + tile.local_col(ni, j)] =
                            tile.acc[mi][ni][2 * h + j] * inv[mi][h];
        __syncthreads();
        const float* row_scores = scores + my_row * NNQ_TOPK_SCORE_LD + my_half * SCAN;
        const u64 first = c0 + (u64)(my_half * SCAN);
        for (int c = 0; c < SCAN; ++c) {
            const u64 col = first + (u64)c;
            if (col >= end) break;
            const float v = row_scores[c];
            const int ci = (int)col;
            if (!nnq_before(v, ci, last_v, last_i)) continue;  // NaN fails here too
            // Insert: shift the worse entries down one slot, dropping entry k − 1.
            int p = k - 1;
            while (p > 0 && nnq_before(v, ci, list_v[(p - 1) * S::THREADS + tid], list_i[(p - 1) * S::THREADS + tid])) {
                list_v[p * S::THREADS + tid] = list_v[(p - 1) * S::THREADS + tid];
                list_i[p * S::THREADS + tid] = list_i[(p - 1) * S::THREADS + tid];
                --p;
            }
            list_v[p * S::THREADS + tid] = v;
            list_i[p * S::THREADS + tid] = ci;
            last_v = list_v[(k - 1) * S::THREADS + tid];
            last_i = list_i[(k - 1) * S::THREADS + tid];
        }
        __syncthreads();  // the next product overwrites the scores
    }

    const u64 row = r0 + (u64)my_row;
    if (row < batch) {
        const u64 lists = splits * NNQ_TOPK_LISTS_PER_ROW;
        const u64 base = (row * lists + split * NNQ_TOPK_LISTS_PER_ROW + (u64)my_half) * (u64)k;
        for (int s = 0; s < k; ++s) {
            part_sim[base + s] = list_v[s * S::THREADS + tid];
            part_idx[base + s] = list_i[s * S::THREADS + tid];
        }
    }
}

// --------------------------------------------------------------------------------------------------- merge --------
// For each query: the k best of its `lists` partial lists of `len` entries ([batch, lists, len]). Round s picks the
// best entry strictly after round s − 1's pick in the total order (entries are distinct keys, so nothing repeats);
// a round that finds nothing leaves the empty slot (−∞, INT_MAX). One warp per query, grid-stride over queries.
CLIPRT_DEVICE void merge_rows(const float* part_sim, const int* part_idx, int* index, float* sim, u64 batch,
                              u64 lists, int len, int k) {
    const int lane = threadIdx.x & 31;
    const u64 warps = (u64)gridDim.x * (blockDim.x >> 5);
    const u64 n = lists * (u64)len;
    for (u64 b = (u64)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5); b < batch; b += warps) {
        const float* ps = part_sim + b * n;
        const int* pi = part_idx + b * n;
        float prev_v = 0.0f;
        int prev_i = 0;
        for (int s = 0; s < k; ++s) {
            float v = nnq_neg_inf();
            int i = INT_MAX;
            for (u64 e = lane; e < n; e += 32) {
                const float ev = ps[e];
                const int ei = pi[e];
                if ((s == 0 || nnq_before(prev_v, prev_i, ev, ei)) && nnq_before(ev, ei, v, i)) {
                    v = ev;
                    i = ei;
                }
            }
#pragma unroll
            for (int off = 16; off > 0; off >>= 1) {
                const float ov = __shfl_xor_sync(0xffffffffu, v, off);
                const int oi = __shfl_xor_sync(0xffffffffu, i, off);
                if (nnq_before(ov, oi, v, i)) {
                    v = ov;
                    i = oi;
                }
            }
            if (lane == 0) {
                index[b * (u64)k + (u64)s] = i;
                sim[b * (u64)k + (u64)s] = v;
            }
            prev_v = v;
            prev_i = i;
        }
    }
}

// ------------------------------------------------------------------------------------------- bench baseline -----
// The second pass of the two-pass baseline with bf16 scores (cuBLASLt writes S [batch, num_keys] in bf16; the fp32
// scores variant uses kernels/nn_topk.cu): per row, the top-1 in the same total order. A block per row (grid-stride),
// 16-byte loads when the row is 16-byte aligned, then a shuffle tree and a pass over the warps' winners.
#define NNQ_ARGMAX_THREADS 256
CLIPRT_DEVICE void argmax_rows_bf16(const bf16* scores, int* index, float* sim, u64 batch, u64 num_keys) {
    __shared__ float win_v[NNQ_ARGMAX_THREADS / 32];
    __shared__ int win_i[NNQ_ARGMAX_THREADS / 32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    for (u64 b = blockIdx.x; b < batch; b += gridDim.x) {
        const bf16* row = scores + b * num_keys;
        float v = nnq_neg_inf();
        int i = INT_MAX;
        u64 done = 0;
        if (is_aligned(row, 16)) {
            const u64 packs = num_keys / 8;
            for (u64 p = threadIdx.x; p < packs; p += NNQ_ARGMAX_THREADS) {
                const Pack<bf16, 8> pk = load_pack<bf16, 8>(row, p);
#pragma unroll
                for (int e = 0; e < 8; ++e) {
                    const float x = to_float(pk.v[e]);
                    if (nnq_before(x, (int)(8 * p + e), v, i)) {
                        v = x;
                        i = (int)(8 * p + e);
                    }
                }
            }
            done = packs * 8;
        }
        for (u64 j = done + threadIdx.x; j < num_keys; j += NNQ_ARGMAX_THREADS) {
            const float x = to_float(row[j]);
            if (nnq_before(x, (int)j, v, i)) {
                v = x;
                i = (int)j;
            }
        }
#pragma unroll
        for (int off = 16; off > 0; off >>= 1) {
            const float ov = __shfl_xor_sync(0xffffffffu, v, off);
            const int oi = __shfl_xor_sync(0xffffffffu, i, off);
            if (nnq_before(ov, oi, v, i)) {
                v = ov;
                i = oi;
            }
        }
        __syncthreads();  // the previous row's winners have been read
        if (lane == 0) {
            win_v[warp] = v;
            win_i[warp] = i;
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            for (int w = 1; w < NNQ_ARGMAX_THREADS / 32; ++w) {
                if (nnq_before(win_v[w], win_i[w], v, i)) {
                    v = win_v[w];
                    i = win_i[w];
                }
            }
            index[b] = i;
            sim[b] = v;
        }
    }
}

// --------------------------------------------------------------------------------------------------- entries ------
#define NNQ_KERNELS(T, SUFFIX)                                                                                       \
    extern "C" __global__ void __launch_bounds__(256) nn_queue_inv_norm_##SUFFIX(const T* q, float* inv_norm,      \
                                                                                   u64 batch, int dim) {            \
        inv_norm_rows<T>(q, inv_norm, batch, dim);                                                                   \
    }                                                                                                                \
    extern "C" __global__ void __launch_bounds__(NnqTop1Shape::THREADS)                                             \
        nn_queue_top1_##SUFFIX(const T* q, const T* keys, const float* inv_norm, float* part_sim, int* part_idx,    \
                               u64 batch, u64 num_keys, int dim, u64 keys_per_split) {                              \
        top1_block<T>(q, keys, inv_norm, part_sim, part_idx, batch, num_keys, dim, keys_per_split);                  \
    }                                                                                                                \
    extern "C" __global__ void __launch_bounds__(NnqTopkShape::THREADS)                                             \
        nn_queue_topk_##SUFFIX(const T* q, const T* keys, const float* inv_norm, float* part_sim, int* part_idx,    \
                               u64 batch, u64 num_keys, int dim, u64 keys_per_split, int k) {                       \
        topk_block<T>(q, keys, inv_norm, part_sim, part_idx, batch, num_keys, dim, keys_per_split, k);               \
    }

NNQ_KERNELS(float, f32)
NNQ_KERNELS(bf16, bf16)

extern "C" __global__ void __launch_bounds__(256) nn_queue_merge_f32(const float* part_sim, const int* part_idx,
                                                                    int* index, float* sim, u64 batch, u64 lists,
                                                                    int len, int k) {
    merge_rows(part_sim, part_idx, index, sim, batch, lists, len, k);
}

extern "C" __global__ void __launch_bounds__(NNQ_ARGMAX_THREADS) nn_queue_argmax_bf16(const bf16* scores, int* index,
                                                                                     float* sim, u64 batch,
                                                                                     u64 num_keys) {
    argmax_rows_bf16(scores, index, sim, batch, num_keys);
}
