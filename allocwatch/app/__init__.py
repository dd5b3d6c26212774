"""The wiring: the one layer that joins kernel/ and outputs/ (session, scan loop, service, self-care)."""
