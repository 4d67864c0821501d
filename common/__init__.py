"""The leaf of the project: identity and roles, time, logging and small concurrency tools.

It imports no other package of the project, so every package may import it
(tests/unit/test_layers.py holds that line).
"""
