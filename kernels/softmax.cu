// softmax kernels: written under issue #5 (see src/backend/cuda/softmax.rs).
#include "common.cuh"
