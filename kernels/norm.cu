// norm kernels: written under issue #5 (see src/backend/cuda/norm.rs).
#include "common.cuh"
