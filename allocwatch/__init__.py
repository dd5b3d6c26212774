# SPDX-License-Identifier: Apache-2.0
"""allocwatch: a live eBPF watchdog for memory-allocation stalls."""

__version__ = "0.1.0"
