"""DynamoDB, S3 and SSM requests counted from outside the scheduler: moto's request recorder.

The moto server appends every request it receives to a file (``MOTO_RECORDER_FILEPATH``)
while recording is on (``/moto-api/recorder/start-recording``). The load generator owns
that file and reads it directly; each line is one request with its method, URL,
headers and body. Nothing runs between the scheduler and moto, so counting adds no
hop to the calls it counts. How the counts are read: docs/request-budget.md.
"""

from __future__ import annotations

import base64
import json
import re
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp

from job_manager.stores.dynamodb_job_store import DOCUMENT_PREFIX
from job_manager.stores.fence import FENCE_ITEM_PREFIX
from scheduler.wiring.app import PROBE_JOB_ID

RECORDER_ENV = "MOTO_RECORDER_FILEPATH"
LEASE_KEY = "scheduler-lease"  # the lease item's key (docs/replicas.md)
# A query of the status index (a recovery's, or the leader's sweep for a deposed leader's
# late writes every few seconds): it belongs to no job.
STATUS_QUERY = "#status = :status"
_S3_KEY_PATH = re.compile(r"^/[^/]+/.+")  # path-style: /bucket/key


class RequestRecorder:
    """Turns moto's recorder on and off and reads what it recorded since a mark."""

    def __init__(self, endpoint: str, path: Path, modelled: bool = False) -> None:
        self._endpoint = endpoint
        self.path = path
        self.modelled = modelled  # the emulator runs a model that counts capacity units

    async def _call(self, action: str) -> None:
        async with aiohttp.ClientSession() as http, http.post(
                f"{self._endpoint}/moto-api/recorder/{action}") as answer:
            if answer.status != 200:
                raise RuntimeError(f"moto's recorder refused {action}: HTTP {answer.status}")

    async def start(self) -> None:
        await self._call("reset-recording")
        await self._call("start-recording")

    async def stop(self) -> None:
        await self._call("stop-recording")

    async def usage(self, reset: bool = False) -> dict[str, Any] | None:
        """The emulator's model's counts (docs/emulators.md): requests, capacity units,
        throttled and conflicting calls; None when the emulator runs no model."""
        if not self.modelled:
            return None
        path = "/emulator/usage/reset" if reset else "/emulator/usage"
        async with aiohttp.ClientSession() as http, http.request(
                "POST" if reset else "GET", f"{self._endpoint}{path}") as answer:
            if answer.status != 200:
                return None
            found: dict[str, Any] = await answer.json(content_type=None)
            return found

    def mark(self) -> int:
        """How many requests are recorded so far (a position for ``since``)."""
        if not self.path.exists():
            return 0
        with self.path.open("rb") as recording:
            return sum(1 for _ in recording)

    def since(self, mark: int) -> list[dict[str, Any]]:
        """The requests recorded after ``mark``."""
        if not self.path.exists():
            return []
        with self.path.open() as recording:
            return [entry for i, line in enumerate(recording) if i >= mark
                    for entry in _entries(line)]


def _entries(line: str) -> list[dict[str, Any]]:
    """The requests one line of moto's recording holds: one, or several when concurrent
    requests were written without a line break between them (moto's recorder does not
    serialize its writes); a request cut by another one's bytes is left out."""
    decoder, entries, at = json.JSONDecoder(), [], 0
    line = line.strip()
    while at < len(line):
        try:
            entry, at = decoder.raw_decode(line, at)
        except json.JSONDecodeError:
            break
        entries.append(entry)
    return entries


def classify(entry: dict[str, Any]) -> tuple[str, str]:
    """(who, ``service.Operation``) of one recorded request. ``who`` is ``scheduler`` for a
    job's store request, ``lease`` for the replicas' lease item, ``background`` for the
    store probe's record and object, the backend-status parameter (SSM), the queries of
    the status index (the leader's sweep) and the reads of the bookings and sessions
    documents (a follower's each round), ``presigned`` for a node's upload or a user's
    download through a presigned URL (not the scheduler's own request)."""
    headers = {k.lower(): v for k, v in entry.get("headers", {}).items()}
    target = headers.get("x-amz-target", "")
    url = urlsplit(entry.get("url", ""))
    if PROBE_JOB_ID in url.path:
        return "background", f"s3.{s3_operation(entry.get('method', ''), url.path, url.query)}"
    if target.startswith("DynamoDB_"):
        operation = f"dynamodb.{target.split('.', 1)[1]}"
        body = request_body(entry)
        if PROBE_JOB_ID in body:
            return "background", operation
        if operation == "dynamodb.Query" and STATUS_QUERY in body:
            return "background", operation  # the leader's sweep (docs/replicas.md, "Fence")
        if DOCUMENT_PREFIX in body:
            return "background", operation  # bookings and sessions, a follower's each round
        # A job write's transaction names a fence item too: it is the job's. A new term's
        # raise of the fence items belongs with the lease.
        lease = not operation.endswith("TransactWriteItems") and (
            LEASE_KEY in body or FENCE_ITEM_PREFIX in body)
        return ("lease" if lease else "scheduler"), operation
    if target.startswith("AmazonSSM."):
        return "background", f"ssm.{target.split('.', 1)[1]}"
    operation = f"s3.{s3_operation(entry.get('method', ''), url.path, url.query)}"
    if "X-Amz-Signature" in parse_qs(url.query):
        return "presigned", operation
    return "scheduler", operation


def request_body(entry: dict[str, Any]) -> str:
    body = entry.get("body") or ""
    if entry.get("body_encoded"):  # the recorder keeps a bytes body in base64
        return base64.b64decode(body).decode(errors="replace")
    return str(body)


def s3_operation(method: str, path: str, query: str) -> str:
    tagging = "tagging" in parse_qs(query, keep_blank_values=True)
    if not _S3_KEY_PATH.match(path):
        return f"{method}Bucket"
    names = {"PUT": "PutObject", "GET": "GetObject", "HEAD": "HeadObject",
             "DELETE": "DeleteObject", "POST": "PostObject"}
    name = names.get(method, method)
    return f"{name}Tagging" if tagging else name


def count(entries: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Requests by who made them, then by ``service.Operation``."""
    counts: dict[str, Counter[str]] = {}
    for entry in entries:
        who, operation = classify(entry)
        counts.setdefault(who, Counter())[operation] += 1
    return {who: dict(sorted(c.items())) for who, c in sorted(counts.items())}


def units_per_job(usage: dict[str, Any], jobs: int) -> dict[str, Any]:
    """The model's capacity units and requests per job, everyone's calls included (the
    nodes' uploads and the lease's renewals during the measure too)."""
    return {"write_units": round(usage["write_units"] / jobs, 3),
            "read_units": round(usage["read_units"] / jobs, 3),
            "requests": {op: round(n / jobs, 3) for op, n in sorted(usage["requests"].items())},
            "throttled": usage["throttled"], "conflicts": usage["conflicts"]}


def per_job(counts: dict[str, dict[str, int]], jobs: int) -> dict[str, Any]:
    """The scheduler's store requests per job, in all and by operation."""
    mine = counts.get("scheduler", {})
    return {"total": round(sum(mine.values()) / jobs, 3),
            "by_operation": {op: round(n / jobs, 3) for op, n in mine.items()}}
