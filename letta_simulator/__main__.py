"""`python -m letta_simulator` runs the simulator's command line."""

from letta_simulator.api import main

if __name__ == "__main__":
    raise SystemExit(main())
