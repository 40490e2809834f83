"""`python -m exporter` is the `tailwatch` command."""

from exporter.cli import main

raise SystemExit(main())
