#!/usr/bin/env python
"""``python tools/train_det.py ARGS`` in a checkout = ``detres train ARGS`` once installed.

Both run :func:`detres.cli.train_det.main` (``--help`` lists the options)."""

from detres.cli.train_det import main

if __name__ == "__main__":
    raise SystemExit(main())
