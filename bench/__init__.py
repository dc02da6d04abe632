"""marketflow benchmarks: `make bench` (or `make bench QUICK=1`). See bench/README.md."""
