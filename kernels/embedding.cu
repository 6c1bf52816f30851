// embedding kernels: written under issue #5 (see src/backend/cuda/embedding.rs).
#include "common.cuh"
