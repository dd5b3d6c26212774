"""allocwatch: a live eBPF watchdog for memory-allocation stalls."""

__version__ = "0.1.0"
