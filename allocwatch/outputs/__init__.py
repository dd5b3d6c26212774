# SPDX-License-Identifier: Apache-2.0
"""Everything that turns snapshots into something outside: report records and
their renderings, sinks, journald, the Prometheus exposition and endpoint, the
socket top reads. Outputs read snapshots only; they never call back into the
scan loop and never import the kernel side."""
