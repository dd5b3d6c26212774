"""Everything that reads the kernel or a captured copy of one: versions,
tracepoints, the probe catalog, the BPF programs (bpfsource, the only bcc
importer), /proc readers. It knows facts; it makes no stall decisions."""
