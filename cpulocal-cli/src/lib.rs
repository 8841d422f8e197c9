//! Baselines the benchmarks and the CLI compare cpulocal with.
