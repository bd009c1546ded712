"""Measuring tools: the speed benchmarks (`bench`, `bench_torch`, `bench_train`, `cache_bench`,
FLOP counts in `flops`), the device check behind the README's GPU table (`device_check`,
`device_table`), the automatic mask generator's reports (`amg_report`) and access to the official
PyTorch SAM (`official`)."""
