"""The phases of a job's life around one small core (docs/design.md, "The job manager").

``core`` claims a change, writes it with a compare-and-set and undoes it; each other
module is one phase and may use the core and the phases listed before it:

- ``core``: the stores, the ledger, changes under way, reads of one job, a job's end;
- ``recovery``: a term's reload of the store, the programs read ahead;
- ``liveness``: nodes, heartbeats, deadlines, requeues;
- ``submission``: new jobs and idempotent retries;
- ``handover``: the next job to a node, given back, reports, upload URLs;
- ``owner_changes``: an owner's cancel and tags;
- ``reads``: status, result, queue positions, usage;
- ``reservations``: bookings, sessions and budgets on their users' and admins' word
  (what they allow at each hand-over is job_manager/turns.py's).

``job_manager/manager.py`` composes them behind the one object the servicers call.
"""
