// Token embedding: the gather forward and its deterministic scatter-add backward.
//
// Maths (table [vocab, dim], ids [tokens], out/dout [tokens, dim]):
//   forward   out[i, :] = table[ids[i], :]                 (f32 or bf16 activations: a copy, exact)
//   backward  dtable[v, :] += Σ_{i : ids[i] = v} dout[i, :]  (dtable fp32, ACCUMULATED; dout f32 or bf16)
//
// Out-of-range ids (forward): the kernel checks every id; a bad one gets a row of NaN and atomicMin's its token
// position into a one-word flag (an integer atomic: the smallest bad position wins whatever the schedule). The
// launcher reads the flag back and returns the error naming the id and its position, as the CPU reference does.
// Validating on the host instead would need the ids there; the flag costs one 8-byte read-back.
//
// Backward without float atomics: the launcher sorts the token positions by id on the host (a stable counting sort,
// O(tokens + vocab), the CPU reference's own), giving runs of positions per distinct id in token order. Block
// (r, c) owns run r and columns c·blockDim.x …: each thread loads dtable[id, col] once, adds the run's dout[pos, col]
// in token order in a register, and stores once. Every table element is written by exactly one thread, in the same
// order as a sequential scatter-add over the tokens, so the result is the CPU reference's bit for bit, every run.
// The alternatives: "one thread per column walking all tokens" has only `dim` threads (a few hundred) on a GPU of
// 100k; fixed-point integer atomics lose precision; a device-side sort of (id, position) keys is the follow-up that
// removes the host round trip. A run as long as the batch (a padding id) is walked serially by one block.
//
// FLOPs and minimum bytes: forward 0 FLOPs, tokens·dim·(read + write) elements, 8 B (f32) or 4 B (bf16) per element
// plus 4 B per id; backward tokens·dim adds, reads dout (4 or 2 B per element) and reads + writes each touched row
// of dtable once (8 B per element of a distinct id).
//
// Launch configuration: forward 1-D, 256 threads, grid = min(⌈tokens·dim/(256·W)⌉, 16·SMs), grid-stride over packs of
// W = 16 B / element size (whole rows only: dim % W = 0 and aligned pointers; scalar otherwise). Backward: grid
// (runs, ⌈dim/threads⌉), threads = min(256, dim rounded up to a warp).
#include "common.cuh"

template <typename T>
CLIPRT_DEVICE void embedding_forward(const int* ids, const T* table, T* out, u64 tokens, u64 dim, u64 vocab,
                                     u64* bad) {
    constexpr int W = 16 / sizeof(T);
    const float nan = __int_as_float(0x7fc00000);
    if (dim % W == 0 && is_aligned(table, 16) && is_aligned(out, 16)) {
        const u64 row_packs = dim / W;
        GRID_STRIDE_LOOP(q, tokens * row_packs) {
            const u64 i = q / row_packs, c = q - i * row_packs;
            const int id = ids[i];
            Pack<T, W> pv;
            if (id >= 0 && (u64)id < vocab) {
                pv = load_pack<T, W>(table, (u64)id * row_packs + c);
            } else {
#pragma unroll
                for (int k = 0; k < W; ++k) pv.v[k] = from_float<T>(nan);
                if (c == 0) atomicMin(bad, i);
            }
            store_pack<T, W>(out, q, pv);
        }
    } else {
        GRID_STRIDE_LOOP(e, tokens * dim) {
            const u64 i = e / dim, c = e - i * dim;
            const int id = ids[i];
            if (id >= 0 && (u64)id < vocab) {
                out[e] = table[(u64)id * dim + c];
            } else {
                out[e] = from_float<T>(nan);
                if (c == 0) atomicMin(bad, i);
            }
        }
    }
}

// `bad` holds u64::MAX before the launch; afterwards the smallest position of an out-of-range id, if any.
extern "C" __global__ void embedding_forward_f32(const int* ids, const float* table, float* out, u64 tokens, u64 dim,
                                                 u64 vocab, u64* bad) {
    embedding_forward(ids, table, out, tokens, dim, vocab, bad);
}
extern "C" __global__ void embedding_forward_bf16(const int* ids, const bf16* table, bf16* out, u64 tokens, u64 dim,
                                                  u64 vocab, u64* bad) {
    embedding_forward(ids, table, out, tokens, dim, vocab, bad);
}

// Run r: distinct id run_id[r], token positions positions[run_start[r] .. run_start[r + 1]] in increasing order.
template <typename T>
CLIPRT_DEVICE void embedding_backward(const unsigned* __restrict__ positions, const unsigned* __restrict__ run_start,
                                      const unsigned* __restrict__ run_id, const T* __restrict__ dout,
                                      float* __restrict__ dtable, u64 dim) {
    const unsigned r = blockIdx.x;
    const u64 col = (u64)blockIdx.y * blockDim.x + threadIdx.x;
    if (col >= dim) return;
    const unsigned begin = run_start[r], end = run_start[r + 1];
    float* cell = dtable + (u64)run_id[r] * dim + col;
    float acc = *cell;
#pragma unroll 4
    for (unsigned t = begin; t < end; ++t) acc = __fadd_rn(acc, to_float(dout[(u64)positions[t] * dim + col]));
    *cell = acc;
}

extern "C" __global__ void embedding_backward_f32(const unsigned* positions, const unsigned* run_start,
                                                  const unsigned* run_id, const float* dout, float* dtable, u64 dim) {
    embedding_backward(positions, run_start, run_id, dout, dtable, dim);
}
extern "C" __global__ void embedding_backward_bf16(const unsigned* positions, const unsigned* run_start,
                                                   const unsigned* run_id, const bf16* dout, float* dtable, u64 dim) {
    embedding_backward(positions, run_start, run_id, dout, dtable, dim);
}
