"""The test bed's process-backed node."""
