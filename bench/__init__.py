"""ComfyFleet benchmarks: `python -m bench [--quick] [--only B1,B2]` (see bench/README.md)."""
