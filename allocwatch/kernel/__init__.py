# SPDX-License-Identifier: Apache-2.0
"""Everything that reads the kernel or a captured copy of one: versions,
tracepoints, the probe catalog, the BPF programs (bpfsource, the only bcc
importer), /proc, mountinfo and cgroupfs readers, and what a report says of a
task (tasks.py). It knows facts; it makes no stall decisions."""
