"""PayloadStore on S3: inputs and results in the job bucket, presigned URLs for access."""

from __future__ import annotations

from datetime import timedelta
from typing import Any
from urllib.parse import urlencode

from botocore.exceptions import BotoCoreError, ClientError

from common.clock import Clock
from job_manager.stores.blocking import BlockingCalls
from job_manager.stores.payload_store import ObjectTags, SignedUrl, input_key, result_key


def _pairs(tag_set: list[dict[str, str]]) -> list[tuple[str, str]]:
    return [(tag["Key"], tag["Value"]) for tag in tag_set]


def _missing(exc: ClientError) -> bool:
    code = exc.response.get("Error", {}).get("Code")
    return code in ("404", "NoSuchKey", "NotFound")


class S3PayloadStore:
    """Objects ``{job_id}.in.proto`` and ``{job_id}.out.proto.gz`` in one bucket."""

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

    def upload_url(self, job_id: str, expires_in: timedelta) -> SignedUrl:
        # Only bucket and key are signed: S3 keeps whatever Content-Encoding the node
        # sends and answers the download with it, as the SDK expects.
        return self._presign("put_object", result_key(job_id), expires_in)

    def download_url(self, job_id: str, expires_in: timedelta) -> SignedUrl:
        return self._presign("get_object", result_key(job_id), expires_in)

    async def result_exists(self, job_id: str) -> bool:
        def head() -> bool:
            try:
                self._client.head_object(Bucket=self._bucket, Key=result_key(job_id))
            except ClientError as exc:
                if _missing(exc):
                    return False
                raise
            return True

        return await self._calls.run(head)

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
