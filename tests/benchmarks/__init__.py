"""`make bench`: throughput, latency and memory of the worker against the pipeline's own limits."""
