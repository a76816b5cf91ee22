"""hotcopy's benchmark harness: source impact and end-to-end time, against alternatives.

Run it with ``scripts/bench``; it builds its own sandbox shard, loads it with sysbench
tables, measures hotcopy, mariabackup and a raw copy floor under a steady write load,
and writes bench/results/results.md, results.json and time_vs_size.png.
"""
