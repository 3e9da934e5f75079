#!/usr/bin/env python
"""``python tools/predict.py ARGS`` in a checkout = ``detres predict ARGS`` once installed.

Both run :func:`detres.cli.predict.main` (``--help`` lists the options)."""

from detres.cli.predict import main

if __name__ == "__main__":
    raise SystemExit(main())
