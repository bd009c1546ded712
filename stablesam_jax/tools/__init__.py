"""Measuring tools: the speed benchmarks (`bench`, `bench_torch`, `cache_bench`), the automatic
mask generator's reports (`amg_report`) and access to the official PyTorch SAM (`official`)."""
