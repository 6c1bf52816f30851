// Fused (flash-style) multi-head attention for CLIP's short sequences: bf16 or fp16 storage, tensor-core products
// (mma.m16n8k16, kernels/mma.cuh) with fp32 accumulation, head dims 32, 64 and 128 (template parameter DH), any
// seq_q and seq_k (tiles are looped over; the ResNet attention pool has 1 query and 50 keys). Semantics are those of
// `Backend::attention_forward/backward` and the CPU reference (src/backend/cpu/attention.rs), except what is saved:
// here only the row log-sum-exp (fp32 [B, H, Sq]); the backward recomputes the probabilities from it.
//
// Maths, per (batch b, head h), query i, key j; Q, K, V read IN PLACE at the spec's offsets and row strides
// (`Attention` in src/backend/spec.rs: the packed [B, S, 3, H, Dh] QKV output needs no transpose):
//   visible(i, j) = key_padding[b, j] == 0  and  (not causal or j ≤ i + (Sk − Sq))
//   s_ij = scale·Q_i·K_j (−∞ where not visible);  m_i = max_j s_ij;  l_i = Σ_j exp(s_ij − m_i)
//   O_i = Σ_j exp(s_ij − m_i)·V_j / l_i;   lse_i = m_i + log l_i   (a row that sees no key: O_i = 0, lse_i = −∞)
//   The forward walks the key tiles with the online softmax (running max and sum in base 2, the scale·log2(e)
//   folded into one multiply), so the scores never leave registers.
//   backward: P_ij = exp(s_ij − lse_i) (0 where not visible);  D_i = Σ_d dO_id·O_id  (= Σ_j P_ij·dP_ij)
//             dP_ij = dO_i·V_j;  dS_ij = scale·P_ij·(dP_ij − D_i)
//             dQ_i = Σ_j dS_ij·K_j;  dK_j = Σ_i dS_ij·Q_i;  dV_j = Σ_i P_ij·dO_i     (OVERWRITTEN in dqkv)
//   Every visible pair has a finite lse (its row sees at least that key), so P never evaluates −∞ − (−∞): fully
//   masked rows get zero output and zero dQ, and give nothing to dK, dV — never NaN.
//
// Floors (bf16, B = 256; FLOPs 4·B·H·Sq·Sk·Dh forward, 2.5× that for the backward's five products; bytes: forward
// reads Q, K, V and writes O and lse once, backward reads Q, K, V, O, dO, lse and writes dQ, dK, dV once; time at
// 3.35 TB/s, H100 SXM):
//   shape                          fwd FLOPs  fwd bytes        bwd FLOPs  bwd bytes
//   ViT-B/32 S=50  H=12 Dh=64      2.0 G      79 MB (24 µs)    4.9 G      158 MB (47 µs)
//   text     S=77  H=8  Dh=64      3.1 G      81 MB (24 µs)    7.8 G      162 MB (48 µs)   (causal: half the FLOPs)
//   ViT-B/16 S=197 H=12 Dh=64      30.5 G     312 MB (93 µs)   76 G       622 MB (186 µs)
// At 25–100 FLOP/B against the H100's ~300 FLOP/B (mma.sync bf16 rate / HBM bandwidth) every shape is memory-bound:
// what matters is touching each byte once and keeping enough loads in flight, not the tensor-core rate. Scaling
// batch to 512 and 1024 scales every figure linearly.
//
// Launch configuration (src/backend/cuda/attention.rs), one block per (b, h, tile), the tile index fastest so the
// blocks of one (b, h) run together and share its K/V (or Q/dO) in L2; static shared memory ≤ 48 KB, so no opt-in:
//   attention_fwd_d{DH}_{T}      128 threads, a 64-query tile (4 warps × 16 rows), 64-key tiles.
//                                smem: Q, K and V tiles [64][DH+8], Q and the first K/V tile loaded together
//                                (at DH = 128 Q goes through the K tile, to stay under 48 KB):
//                                DH 32/64/128 → 15.6 / 27.9 / 35.1 KB.
//   attention_bwd_dq_d{DH}_{T}   128 threads, a 64-query tile; key tiles of 64 (32 for DH ≥ 64: Q and dO
//                                fragments, the dQ accumulators and two score tiles then fit without spills).
//                                Also computes D = rowsum(dO∘O) of its queries first and writes it for the next
//                                kernel (the "small D kernel" folded in: this kernel reads dO anyway).
//                                smem: O/Q and dO [64][DH+8], reused for the K/V tiles: 11.0 / 19.1 / 35.5 KB.
//   attention_bwd_dkv_d{DH}_{T}  a key tile of 16·W keys (W = 4 warps; 2 for DH = 128), looping over query tiles of
//                                64 (32 for DH = 128) from the first query that can see the tile (causal). smem: the
//                                block's K and V, a Q and a dO tile, lse and D: 21.0 / 37.4 / 35.1 KB.
//   dQ and dK/dV come from two kernels, each output row owned by one warp that sums over the other side's tiles in
//   increasing order: no atomics, bit-reproducible. The price is computing S = QKᵀ and dP = dO·Vᵀ twice (7 products
//   instead of 5); at these lengths the products are cheap next to the bytes (see above), and a single
//   block-per-(b, h) pass would need a cross-warp dQ reduction and cap the sequence length by shared memory.
//   Why 64-row query tiles: S = 50 fits one tile (78% used, against 39% of a 128-row tile), S = 77 two, S = 197
//   four; a warp whose 16 rows are all past seq_q skips its products (it still joins the barriers).
// Shared-memory rows are padded to DH + 8 elements: the fragment loads (8 rows × 4 words per instruction) then hit
// 32 different banks. Global ↔ shared copies move 16 bytes per thread when every base, offset and stride is a
// multiple of 8 elements (the packed and separate layouts are), else 2 bytes; rows past the sequence are staged as
// zeros so that no stale or poisoned value reaches a product.
// Registers (ptxas -v, sm_90a, bf16 and f16 alike; 0 spills everywhere, sm_80 within ±8): DH 32/64/128 → fwd
// 118 / 128 / 173, dq 158 / 166 / 242, dkv 164 / 186 / 242 (the 128-thread bound allows 255): 2–4 blocks per SM,
// latency hidden by the blocks' independent tiles rather than by deep occupancy.
#include "common.cuh"
#include "mma.cuh"

// Must match `FlashArgs` in src/backend/cuda/attention.rs (#[repr(C)]: nine u64, an f32, an i32; 80 bytes).
struct FlashArgs {
    u64 batch, heads, seq_q, seq_k;
    u64 q_offset, k_offset, v_offset, q_row_stride, kv_row_stride;
    float scale;
    int causal;
};

#define FLASH_LOG2E 1.4426950408889634f
#define FLASH_LN2 0.6931471805599453f

CLIPRT_DEVICE float flash_neg_inf() { return __int_as_float(0xff800000); }

// Tile shapes per head dim (mirrored by the constants of the launcher).
template <int DH>
struct FlashCfg {
    static constexpr int LD = DH + 8;  // shared-memory row stride, elements
    static constexpr int FWD_BQ = 64, FWD_BK = 64, FWD_THREADS = 128;
    static constexpr int DQ_BQ = 64, DQ_BK = DH >= 64 ? 32 : 64, DQ_THREADS = 128;
    static constexpr int KV_WARPS = DH == 128 ? 2 : 4, KV_BK = 16 * KV_WARPS, KV_BQ = DH == 128 ? 32 : 64;
    static constexpr int KV_THREADS = 32 * KV_WARPS;
    // Shared tiles in 16-byte units (the arrays are declared as such for the alignment of the vector copies).
    // Up to DH = 64 the forward stages Q in its own tile, so Q and the first K/V tile load together (one barrier);
    // at DH = 128 that would pass 48 KB, and Q goes through the K tile first.
    static constexpr bool FWD_Q_OWN = DH <= 64;
    static constexpr int FWD_CHUNKS = (2 * FWD_BK + (FWD_Q_OWN ? FWD_BQ : 0)) * LD * 2 / 16;
    static constexpr int DQ_CHUNKS = 2 * (DQ_BQ > DQ_BK ? DQ_BQ : DQ_BK) * LD * 2 / 16;
    static constexpr int KV_CHUNKS = 2 * (KV_BK + KV_BQ) * LD * 2 / 16;
};

struct alignas(16) FlashChunk {
    uint32_t w[4];
};

// Whether every row of Q, K and V starts 16-byte aligned (then tiles move as 16-byte chunks).
template <typename T>
CLIPRT_DEVICE bool qkv_rows_aligned(const T* qkv, const FlashArgs& a) {
    return is_aligned(qkv, 16) && ((a.q_offset | a.k_offset | a.v_offset | a.q_row_stride | a.kv_row_stride) & 7) == 0;
}

// dst[r][c] = src[r·rs + c] for r < valid, 0 for valid ≤ r < rows (c < DH; dst row stride DH + 8). Whole block.
template <typename T, int DH>
CLIPRT_DEVICE void load_rows(T* dst, const T* src, u64 rs, int valid, int rows, bool vec, int nthreads) {
    constexpr int LD = DH + 8;
    if (vec) {
        constexpr int CPR = DH / 8;
        for (int e = threadIdx.x; e < rows * CPR; e += nthreads) {
            const int r = e / CPR, c = e % CPR;
            FlashChunk v = {{0u, 0u, 0u, 0u}};
            if (r < valid) v = *reinterpret_cast<const FlashChunk*>(src + (u64)r * rs + c * 8);
            *reinterpret_cast<FlashChunk*>(dst + r * LD + c * 8) = v;
        }
    } else {
        for (int e = threadIdx.x; e < rows * DH; e += nthreads) {
            const int r = e / DH, c = e % DH;
            dst[r * LD + c] = r < valid ? src[(u64)r * rs + c] : from_float<T>(0.0f);
        }
    }
}

// dst[r·rs + c] = src[r][c] for r < valid, c < DH. Whole block.
template <typename T, int DH>
CLIPRT_DEVICE void store_rows(T* dst, u64 rs, const T* src, int valid, bool vec, int nthreads) {
    constexpr int LD = DH + 8;
    if (vec) {
        constexpr int CPR = DH / 8;
        for (int e = threadIdx.x; e < valid * CPR; e += nthreads) {
            const int r = e / CPR, c = e % CPR;
            *reinterpret_cast<FlashChunk*>(dst + (u64)r * rs + c * 8) =
                *reinterpret_cast<const FlashChunk*>(src + r * LD + c * 8);
        }
    } else {
        for (int e = threadIdx.x; e < valid * DH; e += nthreads) {
            const int r = e / DH, c = e % DH;
            dst[(u64)r * rs + c] = src[r * LD + c];
        }
    }
}

// A warp's 16 rows of accumulators (scaled by row_scale[0] for rows g, row_scale[1] for rows g + 8), rounded to T,
// into rows 0..15 of the shared tile at dst.
template <typename T, int DH>
CLIPRT_DEVICE void acc_to_shared(T* dst, const float (&acc)[DH / 8][4], float s0, float s1, int lane) {
    constexpr int LD = DH + 8;
    const int g = lane >> 2, t = lane & 3;
#pragma unroll
    for (int nd = 0; nd < DH / 8; ++nd) {
        *reinterpret_cast<uint32_t*>(dst + g * LD + nd * 8 + 2 * t) = pack2_float<T>(acc[nd][0] * s0, acc[nd][1] * s0);
        *reinterpret_cast<uint32_t*>(dst + (g + 8) * LD + nd * 8 + 2 * t) =
            pack2_float<T>(acc[nd][2] * s1, acc[nd][3] * s1);
    }
}

// s[nt] = A·Bᵀ for one warp: A = 16 rows × DH (fragments in registers), B = rows nt·8.. of a shared tile.
template <typename T, int DH, int NT>
CLIPRT_DEVICE void scores_regs(float (&s)[NT][4], const uint32_t (&a)[DH / 16][4], const T* b_rows, int lane) {
    constexpr int LD = DH + 8;
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
        s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
#pragma unroll
        for (int kk = 0; kk < DH / 16; ++kk) {
            uint32_t b[2];
            load_b_from_rows<T>(b_rows + nt * 8 * LD + kk * 16, LD, lane, b);
            mma_16816(s[nt], a[kk], b, T());
        }
    }
}

// The same with A = 16 rows of a shared tile (fragments loaded once per k step).
template <typename T, int DH, int NT>
CLIPRT_DEVICE void scores_smem(float (&s)[NT][4], const T* a_rows, const T* b_rows, int lane) {
    constexpr int LD = DH + 8;
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < DH / 16; ++kk) {
        uint32_t a[4];
        load_a_rowmajor<T>(a_rows + kk * 16, LD, lane, a);
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
            uint32_t b[2];
            load_b_from_rows<T>(b_rows + nt * 8 * LD + kk * 16, LD, lane, b);
            mma_16816(s[nt], a, b, T());
        }
    }
}

// acc (16 rows × DH) += P·X for one warp: P = 16 rows × 8·NT fp32 accumulators (rounded to T on the way, the
// FlashAttention register trick), X = a shared tile [8·NT rows][DH].
template <typename T, int DH, int NT>
CLIPRT_DEVICE void accumulate_pv(float (&acc)[DH / 8][4], const float (&p)[NT][4], const T* x_rows, int lane) {
    constexpr int LD = DH + 8;
#pragma unroll
    for (int kc = 0; kc < NT / 2; ++kc) {
        uint32_t a[4];
        c_to_a<T>(p[2 * kc], p[2 * kc + 1], a);
#pragma unroll
        for (int nd = 0; nd < DH / 8; ++nd) {
            uint32_t b[2];
            load_b_kmajor<T>(x_rows + kc * 16 * LD + nd * 8, LD, lane, b);
            mma_16816(acc[nd], a, b, T());
        }
    }
}

// One past the last key any of the queries [q0, q0 + rows) can see (causal: j ≤ i + Sk − Sq).
CLIPRT_DEVICE u64 visible_key_end(const FlashArgs& a, u64 q0, int rows) {
    if (!a.causal) return a.seq_k;
    const long long end = (long long)(q0 + rows) + ((long long)a.seq_k - (long long)a.seq_q);
    return end <= 0 ? 0 : min((u64)end, a.seq_k);
}

// ------------------------------------------------------------------------------------------------ forward ---------
template <typename T, int DH>
CLIPRT_DEVICE void flash_forward(T* sm, int* kvis, const T* qkv, const unsigned char* pad, T* out, float* lse,
                                 const FlashArgs& a) {
    using C = FlashCfg<DH>;
    constexpr int LD = C::LD, BQ = C::FWD_BQ, BK = C::FWD_BK, NT = BK / 8, NTH = C::FWD_THREADS;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const u64 qtiles = (a.seq_q + BQ - 1) / BQ;
    const u64 bh = blockIdx.x / qtiles, b = bh / a.heads, h = bh % a.heads, q0 = (blockIdx.x % qtiles) * BQ;
    const int qvalid = (int)min((u64)BQ, a.seq_q - q0);
    const u64 width = a.heads * DH;
    const bool vec = qkv_rows_aligned(qkv, a);
    T* ks = sm;
    T* vs = sm + BK * LD;
    T* qs = C::FWD_Q_OWN ? sm + 2 * BK * LD : ks;
    const u64 kend = visible_key_end(a, q0, qvalid);
    // K and V tile k0 (rows past seq_k zero) and its key flags.
    auto load_kv = [&](u64 k0) {
        const int kvalid = (int)min((u64)BK, a.seq_k - k0);
        const u64 krow = (b * a.seq_k + k0) * a.kv_row_stride + h * DH;
        load_rows<T, DH>(ks, qkv + a.k_offset + krow, a.kv_row_stride, kvalid, BK, vec, NTH);
        load_rows<T, DH>(vs, qkv + a.v_offset + krow, a.kv_row_stride, kvalid, BK, vec, NTH);
        for (int j = threadIdx.x; j < BK; j += NTH) kvis[j] = j < kvalid && !(pad && pad[b * a.seq_k + k0 + j]);
    };

    // Q fragments, held in registers for the whole key loop (with their own tile, the first K/V tile comes along).
    load_rows<T, DH>(qs, qkv + a.q_offset + (b * a.seq_q + q0) * a.q_row_stride + h * DH, a.q_row_stride, qvalid, BQ,
                     vec, NTH);
    const bool first_loaded = C::FWD_Q_OWN && kend > 0;
    if (first_loaded) load_kv(0);
    __syncthreads();
    uint32_t qa[DH / 16][4];
#pragma unroll
    for (int kk = 0; kk < DH / 16; ++kk) load_a_rowmajor<T>(qs + warp * 16 * LD + kk * 16, LD, lane, qa[kk]);

    const bool active = warp * 16 < qvalid;
    const long long shift = (long long)a.seq_k - (long long)a.seq_q;
    const long long row0 = (long long)(q0 + warp * 16 + g);
    const float c2 = a.scale * FLASH_LOG2E;
    float m[2] = {flash_neg_inf(), flash_neg_inf()}, l[2] = {0.0f, 0.0f};
    float o[DH / 8][4];
#pragma unroll
    for (int nd = 0; nd < DH / 8; ++nd) o[nd][0] = o[nd][1] = o[nd][2] = o[nd][3] = 0.0f;

    for (u64 k0 = 0; k0 < kend; k0 += BK) {
        if (k0 > 0 || !first_loaded) {
            __syncthreads();  // every warp is done with the previous tiles (and the Q staging)
            load_kv(k0);
            __syncthreads();
        }
        if (!active) continue;
        float s[NT][4];
        scores_regs<T, DH, NT>(s, qa, ks, lane);
        float mx[2] = {m[0], m[1]};
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int r = e >> 1, col = nt * 8 + 2 * t + (e & 1);
                const bool vis = kvis[col] && (!a.causal || (long long)(k0 + col) <= row0 + 8 * r + shift);
                s[nt][e] = vis ? s[nt][e] * c2 : flash_neg_inf();
                mx[r] = fmaxf(mx[r], s[nt][e]);
            }
        float mu[2], alpha[2], rs[2] = {0.0f, 0.0f};
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
            mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
            // A row that has seen no key yet keeps max −∞: subtract 0 instead (every exp is then exp(−∞) = 0).
            mu[r] = mx[r] == flash_neg_inf() ? 0.0f : mx[r];
            alpha[r] = exp2f(m[r] - mu[r]);
            m[r] = mx[r];
        }
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int r = e >> 1;
                s[nt][e] = exp2f(s[nt][e] - mu[r]);
                rs[r] += s[nt][e];
            }
        // l stays a per-thread partial (over this thread's columns) until the end: alpha is the same for the group.
        l[0] = l[0] * alpha[0] + rs[0];
        l[1] = l[1] * alpha[1] + rs[1];
#pragma unroll
        for (int nd = 0; nd < DH / 8; ++nd) {
            o[nd][0] *= alpha[0];
            o[nd][1] *= alpha[0];
            o[nd][2] *= alpha[1];
            o[nd][3] *= alpha[1];
        }
        accumulate_pv<T, DH, NT>(o, s, vs, lane);
    }

    __syncthreads();  // the K tile becomes the output staging tile
    if (active) {
        float inv[2];
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
            l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
            inv[r] = l[r] > 0.0f ? 1.0f / l[r] : 0.0f;
            const long long i = row0 + 8 * r;
            if (t == 0 && i < (long long)a.seq_q)
                lse[bh * a.seq_q + (u64)i] = l[r] > 0.0f ? (m[r] + log2f(l[r])) * FLASH_LN2 : flash_neg_inf();
        }
        acc_to_shared<T, DH>(ks + warp * 16 * LD, o, inv[0], inv[1], lane);
    }
    __syncthreads();
    T* dst = out + (b * a.seq_q + q0) * width + h * DH;
    store_rows<T, DH>(dst, width, ks, qvalid, is_aligned(out, 16), NTH);
}

// ------------------------------------------------------------------------------------------------ backward: dQ ----
// Also writes D_i = Σ_d dO_id·O_id of its queries to dsum [B, H, Sq] for the dK/dV kernel that follows.
template <typename T, int DH>
CLIPRT_DEVICE void flash_backward_dq(T* sm, int* kvis, float* rowbuf, const T* qkv, const unsigned char* pad,
                                     const T* out, const float* lse, const T* dout, float* dsum, T* dqkv,
                                     const FlashArgs& a) {
    using C = FlashCfg<DH>;
    constexpr int LD = C::LD, BQ = C::DQ_BQ, BK = C::DQ_BK, NT = BK / 8, NTH = C::DQ_THREADS;
    static_assert(2 * BQ == NTH, "two threads per query row for D");
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const u64 qtiles = (a.seq_q + BQ - 1) / BQ;
    const u64 bh = blockIdx.x / qtiles, b = bh / a.heads, h = bh % a.heads, q0 = (blockIdx.x % qtiles) * BQ;
    const int qvalid = (int)min((u64)BQ, a.seq_q - q0);
    const u64 width = a.heads * DH;
    const bool vec = qkv_rows_aligned(qkv, a);
    const bool vec_o = is_aligned(out, 16) && is_aligned(dout, 16);
    T* os = sm;  // O, then Q
    T* dos = sm + BQ * LD;
    const u64 orow = (b * a.seq_q + q0) * width + h * DH;

    // D from the staged O and dO rows: two threads per row, each half the columns in order, then their sum.
    load_rows<T, DH>(os, out + orow, width, qvalid, BQ, vec_o, NTH);
    load_rows<T, DH>(dos, dout + orow, width, qvalid, BQ, vec_o, NTH);
    __syncthreads();
    {
        const int r = threadIdx.x >> 1, half = threadIdx.x & 1;
        float acc = 0.0f;
        for (int c = half * (DH / 2); c < (half + 1) * (DH / 2); ++c)
            acc += to_float(os[r * LD + c]) * to_float(dos[r * LD + c]);
        acc += __shfl_xor_sync(0xffffffffu, acc, 1);
        if (half == 0) {
            rowbuf[r] = acc;
            rowbuf[BQ + r] = r < qvalid ? lse[bh * a.seq_q + q0 + r] * FLASH_LOG2E : 0.0f;
            if (r < qvalid) dsum[bh * a.seq_q + q0 + r] = acc;
        }
    }
    uint32_t doa[DH / 16][4];
#pragma unroll
    for (int kk = 0; kk < DH / 16; ++kk) load_a_rowmajor<T>(dos + warp * 16 * LD + kk * 16, LD, lane, doa[kk]);
    __syncthreads();  // O no longer needed: Q goes in its place
    load_rows<T, DH>(os, qkv + a.q_offset + (b * a.seq_q + q0) * a.q_row_stride + h * DH, a.q_row_stride, qvalid, BQ,
                     vec, NTH);
    __syncthreads();
    uint32_t qa[DH / 16][4];
#pragma unroll
    for (int kk = 0; kk < DH / 16; ++kk) load_a_rowmajor<T>(os + warp * 16 * LD + kk * 16, LD, lane, qa[kk]);
    const float d_row[2] = {rowbuf[warp * 16 + g], rowbuf[warp * 16 + g + 8]};
    const float l_row[2] = {rowbuf[BQ + warp * 16 + g], rowbuf[BQ + warp * 16 + g + 8]};

    const bool active = warp * 16 < qvalid;
    const long long shift = (long long)a.seq_k - (long long)a.seq_q;
    const long long row0 = (long long)(q0 + warp * 16 + g);
    const float c2 = a.scale * FLASH_LOG2E;
    float dq[DH / 8][4];
#pragma unroll
    for (int nd = 0; nd < DH / 8; ++nd) dq[nd][0] = dq[nd][1] = dq[nd][2] = dq[nd][3] = 0.0f;
    T* ks = sm;
    T* vs = sm + BK * LD;
    const u64 kend = visible_key_end(a, q0, qvalid);
    for (u64 k0 = 0; k0 < kend; k0 += BK) {
        __syncthreads();  // fragments and the previous tiles consumed
        const int kvalid = (int)min((u64)BK, a.seq_k - k0);
        const u64 krow = (b * a.seq_k + k0) * a.kv_row_stride + h * DH;
        load_rows<T, DH>(ks, qkv + a.k_offset + krow, a.kv_row_stride, kvalid, BK, vec, NTH);
        load_rows<T, DH>(vs, qkv + a.v_offset + krow, a.kv_row_stride, kvalid, BK, vec, NTH);
        for (int j = threadIdx.x; j < BK; j += NTH) kvis[j] = j < kvalid && !(pad && pad[b * a.seq_k + k0 + j]);
        __syncthreads();
        if (!active) continue;
        float s[NT][4], dp[NT][4];
        scores_regs<T, DH, NT>(s, qa, ks, lane);
        scores_regs<T, DH, NT>(dp, doa, vs, lane);
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int r = e >> 1, col = nt * 8 + 2 * t + (e & 1);
                const bool vis = kvis[col] && (!a.causal || (long long)(k0 + col) <= row0 + 8 * r + shift);
                const float p = vis ? exp2f(s[nt][e] * c2 - l_row[r]) : 0.0f;
                s[nt][e] = a.scale * (p * (dp[nt][e] - d_row[r]));
            }
        accumulate_pv<T, DH, NT>(dq, s, ks, lane);
    }
    __syncthreads();
    if (active) acc_to_shared<T, DH>(sm + warp * 16 * LD, dq, 1.0f, 1.0f, lane);
    __syncthreads();
    T* dst = dqkv + a.q_offset + (b * a.seq_q + q0) * a.q_row_stride + h * DH;
    store_rows<T, DH>(dst, a.q_row_stride, sm, qvalid, qkv_rows_aligned(dqkv, a), NTH);
}

// ------------------------------------------------------------------------------------------------ backward: dK dV -
template <typename T, int DH>
CLIPRT_DEVICE void flash_backward_dkv(T* sm, float* rowbuf, const T* qkv, const unsigned char* pad, const float* lse,
                                      const float* dsum, const T* dout, T* dqkv, const FlashArgs& a) {
    using C = FlashCfg<DH>;
    constexpr int LD = C::LD, BKV = C::KV_BK, BQ = C::KV_BQ, NT = BQ / 8, NTH = C::KV_THREADS;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const u64 ktiles = (a.seq_k + BKV - 1) / BKV;
    const u64 bh = blockIdx.x / ktiles, b = bh / a.heads, h = bh % a.heads, k0 = (blockIdx.x % ktiles) * BKV;
    const int kvalid = (int)min((u64)BKV, a.seq_k - k0);
    const u64 width = a.heads * DH;
    const bool vec = qkv_rows_aligned(qkv, a);
    const bool vec_do = is_aligned(dout, 16);
    T* ks = sm;
    T* vs = ks + BKV * LD;
    T* qs = vs + BKV * LD;
    T* dos = qs + BQ * LD;

    const u64 krow = (b * a.seq_k + k0) * a.kv_row_stride + h * DH;
    load_rows<T, DH>(ks, qkv + a.k_offset + krow, a.kv_row_stride, kvalid, BKV, vec, NTH);
    load_rows<T, DH>(vs, qkv + a.v_offset + krow, a.kv_row_stride, kvalid, BKV, vec, NTH);
    const bool active = warp * 16 < kvalid;
    const long long shift = (long long)a.seq_k - (long long)a.seq_q;
    // This thread's two keys (rows g and g + 8 of its warp): in range and not padded.
    long long key[2];
    bool key_ok[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        key[r] = (long long)(k0 + warp * 16 + g + 8 * r);
        key_ok[r] = key[r] < (long long)a.seq_k && !(pad && pad[b * a.seq_k + (u64)key[r]]);
    }
    const float c2 = a.scale * FLASH_LOG2E;
    float dk[DH / 8][4], dv[DH / 8][4];
#pragma unroll
    for (int nd = 0; nd < DH / 8; ++nd) {
        dk[nd][0] = dk[nd][1] = dk[nd][2] = dk[nd][3] = 0.0f;
        dv[nd][0] = dv[nd][1] = dv[nd][2] = dv[nd][3] = 0.0f;
    }
    // Causal: query i sees key j iff i ≥ j − (Sk − Sq); earlier queries see none of this tile.
    u64 qstart = 0;
    if (a.causal) {
        const long long first = (long long)k0 - shift;
        qstart = first > 0 ? (u64)first : 0;
    }
    for (u64 q0 = qstart; q0 < a.seq_q; q0 += BQ) {
        __syncthreads();  // every warp is done with the previous Q/dO tile
        const int qvalid = (int)min((u64)BQ, a.seq_q - q0);
        load_rows<T, DH>(qs, qkv + a.q_offset + (b * a.seq_q + q0) * a.q_row_stride + h * DH, a.q_row_stride, qvalid,
                         BQ, vec, NTH);
        load_rows<T, DH>(dos, dout + (b * a.seq_q + q0) * width + h * DH, width, qvalid, BQ, vec_do, NTH);
        for (int r = threadIdx.x; r < BQ; r += NTH) {
            const bool ok = r < qvalid;
            rowbuf[r] = ok ? lse[bh * a.seq_q + q0 + r] * FLASH_LOG2E : 0.0f;
            rowbuf[BQ + r] = ok ? dsum[bh * a.seq_q + q0 + r] : 0.0f;
        }
        __syncthreads();
        if (!active) continue;
        float s[NT][4], dp[NT][4];  // Sᵀ and dPᵀ: this warp's 16 keys × BQ queries
        scores_smem<T, DH, NT>(s, ks + warp * 16 * LD, qs, lane);
        scores_smem<T, DH, NT>(dp, vs + warp * 16 * LD, dos, lane);
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int r = e >> 1, col = nt * 8 + 2 * t + (e & 1);
                const long long i = (long long)(q0 + col);
                const bool vis = col < qvalid && key_ok[r] && (!a.causal || key[r] <= i + shift);
                const float p = vis ? exp2f(s[nt][e] * c2 - rowbuf[col]) : 0.0f;
                s[nt][e] = p;
                dp[nt][e] = a.scale * (p * (dp[nt][e] - rowbuf[BQ + col]));
            }
        accumulate_pv<T, DH, NT>(dv, s, dos, lane);
        accumulate_pv<T, DH, NT>(dk, dp, qs, lane);
    }
    __syncthreads();  // K and V tiles become the dK and dV staging tiles
    if (active) {
        acc_to_shared<T, DH>(ks + warp * 16 * LD, dk, 1.0f, 1.0f, lane);
        acc_to_shared<T, DH>(vs + warp * 16 * LD, dv, 1.0f, 1.0f, lane);
    }
    __syncthreads();
    const bool vec_d = qkv_rows_aligned(dqkv, a);
    store_rows<T, DH>(dqkv + a.k_offset + krow, a.kv_row_stride, ks, kvalid, vec_d, NTH);
    store_rows<T, DH>(dqkv + a.v_offset + krow, a.kv_row_stride, vs, kvalid, vec_d, NTH);
}

// ------------------------------------------------------------------------------------------------ entry points ----
// Grids (see the header): fwd and dq ⌈Sq/64⌉·B·H blocks, dkv ⌈Sk/(16·W)⌉·B·H; blockIdx.x = (b·H + h)·tiles + tile.
#define FLASH_KERNELS(T, SUFFIX, DH)                                                                                  \
    extern "C" __global__ void __launch_bounds__(FlashCfg<DH>::FWD_THREADS) attention_fwd_d##DH##_##SUFFIX(          \
        const T* qkv, const unsigned char* key_padding, T* out, float* lse, FlashArgs args) {                          \
        __shared__ FlashChunk smem[FlashCfg<DH>::FWD_CHUNKS];                                                          \
        __shared__ int kvis[FlashCfg<DH>::FWD_BK];                                                                     \
        flash_forward<T, DH>(reinterpret_cast<T*>(smem), kvis, qkv, key_padding, out, lse, args);                      \
    }                                                                                                                  \
    extern "C" __global__ void __launch_bounds__(FlashCfg<DH>::DQ_THREADS) attention_bwd_dq_d##DH##_##SUFFIX(         \
        const T* qkv, const unsigned char* key_padding, const T* out, const float* lse, const T* dout, float* dsum,    \
        T* dqkv, FlashArgs args) {                                                                                     \
        __shared__ FlashChunk smem[FlashCfg<DH>::DQ_CHUNKS];                                                           \
        __shared__ int kvis[FlashCfg<DH>::DQ_BK];                                                                      \
        __shared__ float rowbuf[2 * FlashCfg<DH>::DQ_BQ];                                                              \
        flash_backward_dq<T, DH>(reinterpret_cast<T*>(smem), kvis, rowbuf, qkv, key_padding, out, lse, dout, dsum,   \
                                 dqkv, args);                                                                          \
    }                                                                                                                  \
    extern "C" __global__ void __launch_bounds__(FlashCfg<DH>::KV_THREADS) attention_bwd_dkv_d##DH##_##SUFFIX(       \
        const T* qkv, const unsigned char* key_padding, const float* lse, const float* dsum, const T* dout, T* dqkv,   \
        FlashArgs args) {                                                                                              \
        __shared__ FlashChunk smem[FlashCfg<DH>::KV_CHUNKS];                                                           \
        __shared__ float rowbuf[2 * FlashCfg<DH>::KV_BQ];                                                              \
        flash_backward_dkv<T, DH>(reinterpret_cast<T*>(smem), rowbuf, qkv, key_padding, lse, dsum, dout, dqkv, args); \
    }

FLASH_KERNELS(bf16, bf16, 32)
FLASH_KERNELS(bf16, bf16, 64)
FLASH_KERNELS(bf16, bf16, 128)
FLASH_KERNELS(f16, f16, 32)
FLASH_KERNELS(f16, f16, 64)
FLASH_KERNELS(f16, f16, 128)
