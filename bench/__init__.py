"""The benchmark harness lives in bench.hotcopy_bench; results in bench/results/."""
