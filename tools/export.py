#!/usr/bin/env python
"""``python tools/export.py ARGS`` in a checkout = ``detres export ARGS`` once installed.

Both run :func:`detres.cli.export.main` (``--help`` lists the options)."""

from detres.cli.export import main

if __name__ == "__main__":
    raise SystemExit(main())
