"""`python -m exporter` runs the exporter's command line."""

from exporter.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
