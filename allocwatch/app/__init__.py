# SPDX-License-Identifier: Apache-2.0
"""The wiring: the one layer that joins kernel/ and outputs/ (session, scan loop, service, self-care)."""
