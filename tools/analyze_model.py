#!/usr/bin/env python
"""``python tools/analyze_model.py ARGS`` in a checkout = ``detres analyze ARGS`` once installed.

Both run :func:`detres.cli.analyze_model.main` (``--help`` lists the options)."""

from detres.cli.analyze_model import main

if __name__ == "__main__":
    raise SystemExit(main())
