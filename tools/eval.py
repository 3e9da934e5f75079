#!/usr/bin/env python
"""``python tools/eval.py ARGS`` in a checkout = ``detres eval ARGS`` once installed.

Both run :func:`detres.cli.eval.main` (``--help`` lists the options)."""

from detres.cli.eval import main

if __name__ == "__main__":
    raise SystemExit(main())
