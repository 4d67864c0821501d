"""AWS as the tests and the benchmarks see it: moto, without its own costs, behind a model of
DynamoDB's (docs/emulators.md).

Nothing in the service imports this package; it is the test double's workshop.
"""
