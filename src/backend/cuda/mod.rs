//! The CUDA backend (device detection, embedded kernel modules, launchers). Being written.
