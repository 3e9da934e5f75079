#!/usr/bin/env python
"""``python tools/convert_weights.py ARGS`` in a checkout = ``detres convert ARGS`` once installed.

Both run :func:`detres.cli.convert_weights.main` (``--help`` lists the options)."""

from detres.cli.convert_weights import main

if __name__ == "__main__":
    raise SystemExit(main())
