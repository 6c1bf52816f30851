// Element-wise casts and arithmetic over contiguous buffers of n elements.
//
// Maths (fp32 arithmetic; bf16/f16 results rounded to nearest even, as the Rust `half` crate):
//   cast_f32_to_bf16   y[i] = bf16(x[i])           cast_bf16_to_f32   y[i] = float(x[i])   (exact)
//   cast_f32_to_f16    y[i] = f16(x[i])            cast_f16_to_f32    y[i] = float(x[i])   (exact)
//   add_{f32,bf16}     out[i] = a[i] + b[i]
//   axpy_{f32,bf16}    y[i] = y[i] + alpha·x[i]     (one fma)
//   scale_{f32,bf16}   y[i] = alpha·y[i]
//
// FLOPs and the minimum bytes moved per element (read + written):
//   casts: 0 FLOPs (one conversion), 4 + 2 = 6 B
//   add:   1 FLOP,  f32 12 B, bf16 6 B
//   axpy:  2 FLOPs, f32 12 B, bf16 6 B
//   scale: 1 FLOP,  f32 8 B,  bf16 4 B
// All are memory-bound by two orders of magnitude (≤ 0.25 FLOP/B against a ridge of ~20 FLOP/B for fp32 on an
// H100), so the time floor is bytes / DRAM bandwidth: e.g. add_f32 on 2^24 elements moves 201 MB, ≈ 60 µs at
// 3.35 TB/s.
//
// Launch configuration (src/backend/cuda/launch.rs): 1-D, 256 threads per block, grid = min(⌈n / (256·W)⌉, 16·SMs)
// blocks with a grid-stride loop; W = 16 bytes / widest element (4 when f32 is involved, 8 for bf16-only kernels).
// Each thread moves W elements with one 16-byte load or store per operand when every pointer is aligned to its pack,
// else falls back to scalar accesses; the n mod W tail is scalar.
#include "common.cuh"

struct Identity {
    CLIPRT_DEVICE float operator()(float x) const { return x; }
};

struct Add {
    CLIPRT_DEVICE float operator()(float a, float b) const { return a + b; }
};

struct Axpy {
    float alpha;
    // (x, y) -> y + alpha·x
    CLIPRT_DEVICE float operator()(float x, float y) const { return fmaf(alpha, x, y); }
};

struct Scale {
    float alpha;
    CLIPRT_DEVICE float operator()(float y) const { return alpha * y; }
};

// ------------------------------------------------------------------------------------------------ casts -----------
extern "C" __global__ void cast_f32_to_bf16(const float* x, bf16* y, u64 n) { map_unary(x, y, n, Identity()); }
extern "C" __global__ void cast_bf16_to_f32(const bf16* x, float* y, u64 n) { map_unary(x, y, n, Identity()); }
extern "C" __global__ void cast_f32_to_f16(const float* x, f16* y, u64 n) { map_unary(x, y, n, Identity()); }
extern "C" __global__ void cast_f16_to_f32(const f16* x, float* y, u64 n) { map_unary(x, y, n, Identity()); }

// ------------------------------------------------------------------------------------------------ arithmetic ------
extern "C" __global__ void add_f32(const float* a, const float* b, float* out, u64 n) {
    map_binary(a, b, out, n, Add());
}
extern "C" __global__ void add_bf16(const bf16* a, const bf16* b, bf16* out, u64 n) {
    map_binary(a, b, out, n, Add());
}

// In place: y is both an input and the output.
extern "C" __global__ void axpy_f32(float alpha, const float* x, float* y, u64 n) {
    map_binary(x, (const float*)y, y, n, Axpy{alpha});
}
extern "C" __global__ void axpy_bf16(float alpha, const bf16* x, bf16* y, u64 n) {
    map_binary(x, (const bf16*)y, y, n, Axpy{alpha});
}

extern "C" __global__ void scale_f32(float alpha, float* y, u64 n) { map_unary((const float*)y, y, n, Scale{alpha}); }
extern "C" __global__ void scale_bf16(float alpha, bf16* y, u64 n) { map_unary((const bf16*)y, y, n, Scale{alpha}); }
