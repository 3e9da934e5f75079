#!/usr/bin/env python
"""``python tools/plot_runs.py ARGS`` in a checkout = ``detres plot ARGS`` once installed.

Both run :func:`detres.cli.plot_runs.main` (``--help`` lists the options)."""

from detres.cli.plot_runs import main

if __name__ == "__main__":
    raise SystemExit(main())
