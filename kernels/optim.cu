// optim kernels: written under issue #5 (see src/backend/cuda/optim.rs).
#include "common.cuh"
