"""Small, separate measurements that explain a benchmark figure (see docs/benchmarks.md)."""
