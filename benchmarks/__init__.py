"""focal_det's benchmarks, run from the repository root as modules (no sys.path edits):
``python -m benchmarks.bench_losses``, ``python -m benchmarks.bench_model`` (see README.md)."""
