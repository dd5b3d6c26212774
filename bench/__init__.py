# SPDX-License-Identifier: Apache-2.0
"""allocwatch's benchmarks: `python bench/run.py [--quick]` runs them all (as root)."""
