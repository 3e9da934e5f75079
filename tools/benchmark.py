#!/usr/bin/env python
"""``python tools/benchmark.py ARGS`` in a checkout = ``detres benchmark ARGS`` once installed.

Both run :func:`detres.cli.benchmark.main` (``--help`` lists the options)."""

from detres.cli.benchmark import main

if __name__ == "__main__":
    raise SystemExit(main())
