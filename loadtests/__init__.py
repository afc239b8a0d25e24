"""Load generation and benchmarks for seqserve."""
