"""A standalone submission is one durable write: program and record in one SQLite
transaction (docs/design.md, "Standalone storage"), seen through the store metrics."""

from __future__ import annotations

from tests.conftest import Running
from tests.helpers import submit_request
from tests.operations.support import scrape, value

CALLS = "mqc3_store_call_seconds_count"


async def test_a_standalone_submission_writes_program_and_record_in_one_call(
        running: Running, mode: str) -> None:
    port = running.scheduler.metrics_port
    before = await scrape(port)
    token = running.token()
    for _ in range(3):
        answer = await running.clients.submission.SubmitJob(submit_request(token))
        assert answer.error.code == "", answer
    after = await scrape(port)

    def calls(store: str, operation: str) -> float:
        return (value(after, CALLS, store=store, operation=operation)
                - value(before, CALLS, store=store, operation=operation))

    if mode == "standalone":
        assert calls("payloads", "create_with_input") == 3
        assert calls("jobs", "create") == 0
    else:  # S3 keeps the programs: the program first, then the record
        assert calls("payloads", "put_input") == 3
        assert calls("jobs", "create") == 3
