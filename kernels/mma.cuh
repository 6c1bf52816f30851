// Warp-level tensor-core tile products (mma.sync.m16n8k16, sm_80 and later): D = A·B + D for a 16×16 A, a 16×8 B and
// a 16×8 fp32 accumulator, bf16 or fp16 inputs. Shared by the fused kernels (clip_loss, nn_queue, attention).
//
// Fragment layouts (PTX ISA, "Matrix Fragments for mma.m16n8k16" with .bf16/.f16). In a warp, lane = 4·g + t with
// g = lane / 4 (the "group") and t = lane % 4 (the thread in the group). A 32-bit register packs two consecutive
// elements along k (A, B) or along n (C); the lower 16 bits hold the lower index.
//   A (16×16, row-major, a[4]): a[0] = A[g][2t..2t+1],   a[1] = A[g+8][2t..2t+1],
//                               a[2] = A[g][2t+8..2t+9], a[3] = A[g+8][2t+8..2t+9]
//   B (16×8,  k×n,       b[2]): b[0] = B[2t..2t+1][g],   b[1] = B[2t+8..2t+9][g]
//   C (16×8,  fp32,      c[4]): c[0..1] = C[g][2t..2t+1], c[2..3] = C[g+8][2t..2t+1]
// So a row-major matrix X [rows, k] (k contiguous) gives A fragments with 32-bit loads, and a row-major Y [cols, k]
// gives B fragments of Yᵀ the same way: S = X·Yᵀ needs no transpose. Two adjacent C tiles (n = 0..7 and 8..15) of
// one 16-row strip, rounded to 16 bits, are exactly the A fragment of the next product over those 16 columns
// (the FlashAttention register trick): see `c_to_a`.
//
// The CPU emulation harness replaces this header with a warp-collective model of the same layouts.
#pragma once

#include "common.cuh"

// Two elements packed into one 32-bit register, `lo` in the lower half.
template <typename T>
CLIPRT_DEVICE uint32_t pack2(T lo, T hi) {
    uint16_t l, h;
    memcpy(&l, &lo, 2);
    memcpy(&h, &hi, 2);
    return (uint32_t)l | ((uint32_t)h << 16);
}

template <typename T>
CLIPRT_DEVICE uint32_t pack2_float(float lo, float hi) {
    return pack2<T>(from_float<T>(lo), from_float<T>(hi));
}

// d += A·B over one m16n8k16 tile, fp32 accumulation.
CLIPRT_DEVICE void mma_16816(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2], bf16) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#endif
}

CLIPRT_DEVICE void mma_16816(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2], f16) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#endif
}

// The A fragment (16 rows × 16 k) made of two fp32 accumulator tiles: c_lo holds columns 0..7, c_hi columns 8..15.
template <typename T>
CLIPRT_DEVICE void c_to_a(const float (&c_lo)[4], const float (&c_hi)[4], uint32_t (&a)[4]) {
    a[0] = pack2_float<T>(c_lo[0], c_lo[1]);
    a[1] = pack2_float<T>(c_lo[2], c_lo[3]);
    a[2] = pack2_float<T>(c_hi[0], c_hi[1]);
    a[3] = pack2_float<T>(c_hi[2], c_hi[3]);
}

// A fragment from a row-major tile in shared (or global) memory: rows r0..r0+15, k0..k0+15, row stride `ld`
// elements (even, and the base 4-byte aligned, so each pair is one 32-bit load).
template <typename T>
CLIPRT_DEVICE void load_a_rowmajor(const T* base, int ld, int lane, uint32_t (&a)[4]) {
    const int g = lane >> 2, t = lane & 3;
    const uint32_t* p0 = reinterpret_cast<const uint32_t*>(base + g * ld + 2 * t);
    const uint32_t* p1 = reinterpret_cast<const uint32_t*>(base + (g + 8) * ld + 2 * t);
    a[0] = p0[0];
    a[1] = p1[0];
    a[2] = p0[4];
    a[3] = p1[4];
}

// B fragment of Yᵀ from a row-major Y tile [8 cols(n), 16 k] with row stride `ld`: B[k][n] = Y[n][k].
template <typename T>
CLIPRT_DEVICE void load_b_from_rows(const T* base, int ld, int lane, uint32_t (&b)[2]) {
    const int g = lane >> 2, t = lane & 3;
    const uint32_t* p = reinterpret_cast<const uint32_t*>(base + g * ld + 2 * t);
    b[0] = p[0];
    b[1] = p[4];
}

// B fragment from a row-major [16 k, 8 n] tile (n contiguous, row stride `ld`), e.g. V in P·V: the pair along k
// is two 16-bit loads.
template <typename T>
CLIPRT_DEVICE void load_b_kmajor(const T* base, int ld, int lane, uint32_t (&b)[2]) {
    const int g = lane >> 2, t = lane & 3;
    b[0] = pack2<T>(base[(2 * t) * ld + g], base[(2 * t + 1) * ld + g]);
    b[1] = pack2<T>(base[(2 * t + 8) * ld + g], base[(2 * t + 9) * ld + g]);
}
