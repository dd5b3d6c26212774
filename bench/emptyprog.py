# SPDX-License-Identifier: Apache-2.0
"""The empty BPF program every per-event figure is set beside: what attaching
anything at all to a hook costs (the tracepoint's enabling, the BPF dispatch
and, with run-time stats on, the stats themselves)."""

EMPTY_SRC = "int empty(void *ctx) { return 0; }\n"
