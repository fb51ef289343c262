# Kept import-light: transformers probes a top-level module named `kernels`.
