"""``python -m detres <command>``: the same as the ``detres`` console command."""

from detres.cli import main

raise SystemExit(main())
