#!/usr/bin/env python
"""``python tools/pretrain_cls.py ARGS`` in a checkout = ``detres pretrain ARGS`` once installed.

Both run :func:`detres.cli.pretrain_cls.main` (``--help`` lists the options)."""

from detres.cli.pretrain_cls import main

if __name__ == "__main__":
    raise SystemExit(main())
