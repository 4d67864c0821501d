#!/usr/bin/env python3
"""The MQC3 scheduler's load generator. ``python benchmarks/load.py --help``.

Starts the scheduler (standalone, or AWS mode on a moto server) as child processes,
measures the reference ceilings, runs the submit, drain, steady and status phases,
accounts for every job and writes one JSON result (benchmarks/out/ by default).
"""

import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks.runner import main

    sys.exit(main(sys.argv[1:]))
