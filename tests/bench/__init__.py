"""`make bench`: end-to-end throughput against the compute floor (not a test suite)."""
