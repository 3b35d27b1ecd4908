"""``python -m benchmarks``: see benchmarks/harness.py and benchmarks/README.md."""

from benchmarks.harness import main

raise SystemExit(main())
