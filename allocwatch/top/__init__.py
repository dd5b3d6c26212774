# SPDX-License-Identifier: Apache-2.0
"""`allocwatch top`: the live picture, a client of the daemon's socket or of a session of its own."""
