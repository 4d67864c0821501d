"""The load generator (``load.py``), the memory measurement (``memory.py``) and their results."""
