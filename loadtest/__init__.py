"""Load tests: perf_analyzer sweeps, Locust, reports."""
