#!/usr/bin/env python
"""``python tools/bench_eval.py ARGS`` in a checkout = ``detres bench-eval ARGS`` once installed.

Both run :func:`detres.cli.bench_eval.main` (``--help`` lists the options)."""

from detres.cli.bench_eval import main

if __name__ == "__main__":
    raise SystemExit(main())
