"""Real nameservers started as plain processes on loopback, for the demo and the tests.

Each launcher writes a config into a directory of its own, on ports it is given or picks, with an
unsigned test zone, starts the server in the foreground, waits until it answers, and stops it.
It installs nothing: the server comes from the OS packages.

This is the krs-plugin-lab distribution (lab/pyproject.toml), kept out of the krs-plugin wheel:
operators never install it; ``./run`` installs it next to krs-plugin for the demo and the tests.
"""
