"""PayloadStore on S3: inputs and results in the job bucket, presigned URLs for access."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any
from urllib.parse import urlencode

from botocore.exceptions import BotoCoreError, ClientError

from common.clock import Clock
from job_manager.stores.blocking import BlockingCalls
from job_manager.stores.payload_store import (
    HANDOVER_META,
    ObjectTags,
    SignedUrl,
    handover_result_key,
    input_key,
    result_key,
)


def _pairs(tag_set: list[dict[str, str]]) -> list[tuple[str, str]]:
    return [(tag["Key"], tag["Value"]) for tag in tag_set]


def _missing(exc: ClientError) -> bool:
    code = exc.response.get("Error", {}).get("Code")
    return code in ("404", "NoSuchKey", "NotFound")


# The headers a node sets at upload (docs/protocol.md) that a promoted copy keeps.
_KEPT_HEADERS = ("ContentType", "ContentEncoding", "ContentDisposition")


class S3PayloadStore:
    """Objects ``{job_id}.in.proto`` and ``{job_id}.out.proto.gz`` in one bucket (with
    requeues, each hand-over uploads to its own key first: docs/protocol.md)."""

    def __init__(self, client: Any, bucket: str, clock: Clock, max_workers: int = 16) -> None:
        self._client = client
        self._bucket = bucket
        self._clock = clock
        self._calls = BlockingCalls("s3-payloads", max_workers, (ClientError, BotoCoreError))

    async def put_input(self, job_id: str, program: bytes, tags: ObjectTags | None = None) -> None:
        # The headers and tags of the original deployment's objects, which an existing
        # bucket's lifecycle rules and policies may select on.
        extra = {"Tagging": urlencode(_pairs(tags.as_tag_set()))} if tags else {}
        await self._calls.run(
            lambda: self._client.put_object(
                Bucket=self._bucket,
                Key=input_key(job_id),
                Body=program,
                ContentType="application/protobuf",
                ContentDisposition="attachment",
                **extra,
            )
        )

    async def get_input(self, job_id: str) -> bytes | None:
        def get() -> bytes | None:
            try:
                answer = self._client.get_object(Bucket=self._bucket, Key=input_key(job_id))
            except ClientError as exc:
                if _missing(exc):
                    return None
                raise
            return bytes(answer["Body"].read())

        return await self._calls.run(get)

    async def delete_input(self, job_id: str) -> None:
        await self._calls.run(
            lambda: self._client.delete_object(Bucket=self._bucket, Key=input_key(job_id))
        )

    def upload_url(self, job_id: str, expires_in: timedelta,
                   handover: int | None = None) -> SignedUrl:
        # Only bucket and key are signed: S3 keeps whatever Content-Encoding the node
        # sends and answers the download with it, as the SDK expects.
        key = result_key(job_id) if handover is None else handover_result_key(job_id, handover)
        return self._presign("put_object", key, expires_in)

    def download_url(self, job_id: str, expires_in: timedelta) -> SignedUrl:
        return self._presign("get_object", result_key(job_id), expires_in)

    async def result_exists(self, job_id: str, handover: int | None = None) -> bool:
        if handover is None:
            return await self._calls.run(self._head, result_key(job_id)) is not None
        return await self._calls.run(self._handover_result, job_id, handover)

    def _handover_result(self, job_id: str, handover: int) -> bool:
        if self._head(handover_result_key(job_id, handover)) is not None:
            return True
        final = self._head(result_key(job_id))
        return final is not None and final.get("Metadata", {}).get(HANDOVER_META) == str(handover)

    async def promote_result(self, job_id: str, handover: int) -> bool:
        return await self._calls.run(self._promote, job_id, handover)

    def _promote(self, job_id: str, handover: int) -> bool:
        """Copy the hand-over's object over the final key, then delete it: a crash in
        between leaves the hand-over's object, and the next report promotes it again."""
        source = handover_result_key(job_id, handover)
        uploaded = self._head(source)
        if uploaded is None:
            return self._handover_result(job_id, handover)  # promoted before, or never
        # The node's own headers travel with the copy, as the download must answer with
        # them (Content-Encoding: gzip for the SDK); the hand-over is noted beside them.
        kept = {name: uploaded[name] for name in _KEPT_HEADERS if uploaded.get(name)}
        self._client.copy_object(
            Bucket=self._bucket, Key=result_key(job_id),
            CopySource={"Bucket": self._bucket, "Key": source},
            MetadataDirective="REPLACE", Metadata={HANDOVER_META: str(handover)}, **kept)
        self._client.delete_object(Bucket=self._bucket, Key=source)
        return True

    async def discard_results(self, job_id: str, handovers: Sequence[int]) -> None:
        if not handovers:
            return
        doomed = [{"Key": handover_result_key(job_id, n)} for n in handovers]
        await self._calls.run(lambda: self._client.delete_objects(
            Bucket=self._bucket, Delete={"Objects": doomed, "Quiet": True}))

    def _head(self, key: str) -> dict[str, Any] | None:
        try:
            return dict(self._client.head_object(Bucket=self._bucket, Key=key))
        except ClientError as exc:
            if _missing(exc):
                return None
            raise

    async def seal_result(self, job_id: str, tags: ObjectTags) -> None:
        await self._calls.run(
            lambda: self._client.put_object_tagging(
                Bucket=self._bucket, Key=result_key(job_id),
                Tagging={"TagSet": tags.as_tag_set()},
            )
        )

    async def close(self) -> None:
        self._calls.close()

    def _presign(self, operation: str, key: str, expires_in: timedelta) -> SignedUrl:
        expires_at = self._clock.now().replace(microsecond=0) + expires_in
        url = self._client.generate_presigned_url(
            operation,
            Params={"Bucket": self._bucket, "Key": key},
            ExpiresIn=int(expires_in.total_seconds()),
        )
        return SignedUrl(url=url, expires_at=expires_at)
