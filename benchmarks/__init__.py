"""Short measurement scripts, each run as ``python -m benchmarks.<name>`` from the repository root."""
