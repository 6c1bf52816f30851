// Element-wise activations, forward y = f(x) and backward dx = f'(x)·dy, over contiguous buffers of n elements.
// Storage f32 or bf16, arithmetic always fp32.
//
// Maths:
//   ReLU       f(x) = max(x, 0)                  f'(x) = 1 if x > 0 else 0 (0 at the kink, as PyTorch)
//   GELU       f(x) = x·Φ(x) = ½x(1 + erf(x/√2)) f'(x) = Φ(x) + x·φ(x),  φ(x) = exp(−x²/2)/√(2π)   (exact, erff)
//   QuickGELU  f(x) = x·σ(1.702x)                f'(x) = s + 1.702·x·s·(1 − s),  s = σ(1.702x)
//
// FLOPs per element (erff and expf counted as ~20 and ~10 FLOPs, what their polynomial evaluations cost):
//   ReLU fwd 1, bwd 1;  GELU fwd ≈ 24, bwd ≈ 40;  QuickGELU fwd ≈ 14, bwd ≈ 20.
// Minimum bytes moved per element (read + written):
//   forward (x → y):        f32 8 B,  bf16 4 B
//   backward (x, dy → dx):  f32 12 B, bf16 6 B
// Even GELU backward in bf16 is ≈ 7 FLOP/B, under the ~20 FLOP/B fp32 ridge of an H100 (and erff/expf run on the
// SFU/FMA pipes at full rate), so every kernel here is memory-bound: time floor = bytes / DRAM bandwidth.
//
// Launch configuration (src/backend/cuda/launch.rs): 1-D, 256 threads per block, grid = min(⌈n / (256·W)⌉, 16·SMs)
// blocks with a grid-stride loop; W = 4 (f32) or 8 (bf16) elements per 16-byte packed access when every pointer is
// aligned to its pack, scalar otherwise and for the n mod W tail.
#include "common.cuh"

#define QUICK_GELU_ALPHA 1.702f
#define INV_SQRT2 0.70710678118654752440f
#define INV_SQRT_2PI 0.39894228040143267794f

struct ReluForward {
    CLIPRT_DEVICE float operator()(float x) const { return x > 0.0f ? x : 0.0f; }
};
struct ReluBackward {
    CLIPRT_DEVICE float operator()(float x, float dy) const { return x > 0.0f ? dy : 0.0f; }
};

struct GeluForward {
    CLIPRT_DEVICE float operator()(float x) const { return 0.5f * x * (1.0f + erff(x * INV_SQRT2)); }
};
struct GeluBackward {
    CLIPRT_DEVICE float operator()(float x, float dy) const {
        const float cdf = 0.5f * (1.0f + erff(x * INV_SQRT2));
        const float pdf = INV_SQRT_2PI * expf(-0.5f * x * x);
        return dy * (cdf + x * pdf);
    }
};

// σ(z) = 1 / (1 + e^−z): for z → −∞, e^−z overflows to +inf and σ → 0 exactly, no NaN.
CLIPRT_DEVICE float sigmoid(float z) { return 1.0f / (1.0f + expf(-z)); }

struct QuickGeluForward {
    CLIPRT_DEVICE float operator()(float x) const { return x * sigmoid(QUICK_GELU_ALPHA * x); }
};
struct QuickGeluBackward {
    CLIPRT_DEVICE float operator()(float x, float dy) const {
        const float s = sigmoid(QUICK_GELU_ALPHA * x);
        return dy * (s + QUICK_GELU_ALPHA * x * s * (1.0f - s));
    }
};

// name##_forward_{f32,bf16}(x, y, n) and name##_backward_{f32,bf16}(x, dy, dx, n).
#define ACTIVATION_KERNELS(name, Fwd, Bwd)                                                                \
    extern "C" __global__ void name##_forward_f32(const float* x, float* y, u64 n) {                      \
        map_unary(x, y, n, Fwd());                                                                        \
    }                                                                                                     \
    extern "C" __global__ void name##_forward_bf16(const bf16* x, bf16* y, u64 n) {                       \
        map_unary(x, y, n, Fwd());                                                                        \
    }                                                                                                     \
    extern "C" __global__ void name##_backward_f32(const float* x, const float* dy, float* dx, u64 n) {   \
        map_binary(x, dy, dx, n, Bwd());                                                                  \
    }                                                                                                     \
    extern "C" __global__ void name##_backward_bf16(const bf16* x, const bf16* dy, bf16* dx, u64 n) {     \
        map_binary(x, dy, dx, n, Bwd());                                                                  \
    }

ACTIVATION_KERNELS(relu, ReluForward, ReluBackward)
ACTIVATION_KERNELS(gelu, GeluForward, GeluBackward)
ACTIVATION_KERNELS(quick_gelu, QuickGeluForward, QuickGeluBackward)
