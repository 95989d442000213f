"""The exporter's benchmark: `python -m bench` (or `make bench`) writes docs/benchmarks.md.

Modules: `run` (one run, size by size), `load` (scrape clients), `target` (servers under test, in
their own processes), `procs` (the processes), `usual` (the prometheus-client design compared
against), `stages` (the stages of a poll, in-process), `report` (markdown and plot).
"""
