#!/usr/bin/env python3
"""The MQC3 scheduler's command line. See README.md, or run with --help."""

import sys

from scheduler.wiring.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
