#!/usr/bin/env python
"""``python tools/inspect_data.py ARGS`` in a checkout = ``detres inspect ARGS`` once installed.

Both run :func:`detres.cli.inspect_data.main` (``--help`` lists the options)."""

from detres.cli.inspect_data import main

if __name__ == "__main__":
    raise SystemExit(main())
