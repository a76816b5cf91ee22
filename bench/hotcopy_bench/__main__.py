"""``python -m bench.hotcopy_bench``: see cli.py."""

from bench.hotcopy_bench.cli import main

raise SystemExit(main())
