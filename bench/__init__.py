"""allocwatch's benchmarks: `python bench/run.py [--quick]` runs them all (as root)."""
