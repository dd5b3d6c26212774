# SPDX-License-Identifier: Apache-2.0
"""The pure core: what one scan read in, what it decided out. Standard library
only; nothing here reads a clock, a map, /proc or a file."""
