"""The TokenDatabaseService: who a token belongs to, with which role, until when.

Runs embedded in the standalone scheduler or alone (``python -m token_database``).
Tokens are kept as SHA-256 fingerprints only; a raw token is shown once, when made.
"""
