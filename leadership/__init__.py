"""Who may change jobs: a lease in DynamoDB among replicas, a file lock in standalone.

docs/replicas.md says how the replicas share the work and what happens on each failure.
"""
