"""``s3://bucket/prefix`` through boto3, for AWS or any S3-compatible store (``--endpoint-url`` or
``AWS_ENDPOINT_URL``). Credentials, region and profile come from boto3's usual sources and are
never written anywhere by this module.

The tree's content manifest (``.streamapprox-sync.json``: path -> size, sha256, ETag) makes the
next sync incremental; an entry whose ETag no longer matches the object is ignored (someone else
replaced the object). Large files go up as multipart uploads whose progress is recorded locally
after each part, so a rerun after an interruption uploads only the missing parts.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

from data_shards.files import CHUNK, atomic_destination, cache_root
from sync.base import SYNC_MANIFEST, Entry, Progress, Store, SyncError, Verifier, file_digests

MULTIPART_THRESHOLD = 16 * 1024 * 1024
PART_WORKERS = 8


def configured_part_size() -> int:
    """Multipart part size: STREAMAPPROX_S3_PART_MB (default 8; S3's minimum is 5)."""
    megabytes = int(os.environ.get("STREAMAPPROX_S3_PART_MB", "8"))
    if megabytes < 5:
        raise SyncError(f"STREAMAPPROX_S3_PART_MB={megabytes}: S3 parts must be at least 5 MB")
    return megabytes * 1024 * 1024


def state_dir() -> Path:
    """Where in-flight multipart uploads are recorded (resumable across processes)."""
    return cache_root() / "sync" / "uploads"


def _local_size(src: Path, entry: Entry) -> int:
    """The size listed for local file ``src``, or its own where the entry came from a store that lists none."""
    return entry.size if entry.size is not None else src.stat().st_size


def explain(url: str, exc: Exception) -> SyncError:
    """One clear sentence for the failures a user can fix."""
    from botocore.exceptions import ClientError, EndpointConnectionError, FlexibleChecksumError, NoCredentialsError

    if isinstance(exc, FlexibleChecksumError):
        return SyncError(f"{url}: the received bytes do not match the server's checksum (corrupted); nothing was kept")
    if isinstance(exc, NoCredentialsError):
        return SyncError(f"{url}: no AWS credentials found (set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or ~/.aws/credentials)")
    if isinstance(exc, EndpointConnectionError):
        return SyncError(f"{url}: cannot reach the S3 endpoint ({exc}); check --endpoint-url / AWS_ENDPOINT_URL and the network")
    if isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code", "")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code == "NoSuchBucket":
            return SyncError(f"{url}: the bucket does not exist (create it, or fix the URL)")
        if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken", "AuthFailure"):
            return SyncError(f"{url}: authentication failed ({code}); check the AWS credentials in use")
        if code in ("AccessDenied", "AllAccessDisabled") or status == 403:
            return SyncError(f"{url}: permission denied ({code or status}); the credentials in use may not read/write this bucket or prefix")
        return SyncError(f"{url}: S3 error {code or status}: {exc}")
    return SyncError(f"{url}: {type(exc).__name__}: {exc}")


class S3Store(Store):
    def __init__(self, url: str, bucket: str, prefix: str, endpoint_url: str | None = None):
        import boto3
        from botocore.config import Config

        self.url, self.bucket, self.prefix = url, bucket, prefix.strip("/")
        # Every upload carries its own checksum (SHA-256, or Content-MD5 per part), so botocore adds
        # no CRC of its own; responses are still checked.
        config = Config(retries={"max_attempts": 8, "mode": "standard"}, max_pool_connections=32,
                        request_checksum_calculation="when_required")
        self.client = boto3.session.Session().client("s3", endpoint_url=endpoint_url, config=config)
        self._lock = threading.Lock()
        self._recorded: dict | None = None  # the content manifest as list() found it

    def key(self, rel: str) -> str:
        return f"{self.prefix}/{rel}" if self.prefix else rel

    def _call(self, fn, **kwargs):
        try:
            return fn(**kwargs)
        except SyncError:
            raise
        except Exception as exc:  # botocore raises many types; each becomes one clear message
            raise explain(self.url, exc) from exc

    def _objects(self) -> dict[str, dict]:
        start = f"{self.prefix}/" if self.prefix else ""
        objects = {}
        paginator = self.client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=start):
                for obj in page.get("Contents", []):
                    objects[obj["Key"][len(start):]] = obj
        except Exception as exc:
            raise explain(self.url, exc) from exc
        return objects

    def _manifest(self) -> dict:
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self.key(SYNC_MANIFEST))["Body"].read()
        except self.client.exceptions.NoSuchKey:
            return {}
        except Exception as exc:
            raise explain(self.url, exc) from exc
        return json.loads(body).get("files", {})

    def list(self) -> dict[str, Entry]:
        objects = self._objects()
        recorded = self._manifest() if SYNC_MANIFEST in objects else {}
        self._recorded = recorded if SYNC_MANIFEST in objects else None
        entries = {}
        for rel, obj in objects.items():
            if rel in (SYNC_MANIFEST, "") or rel.endswith("/"):  # "": the prefix's own folder marker (pyarrow, consoles make them)
                continue
            etag = obj["ETag"].strip('"')
            known = recorded.get(rel, {})
            sha = known.get("sha256") if known.get("etag") == etag and known.get("size") == obj["Size"] else None
            entries[rel] = Entry(obj["Size"], sha, etag if "-" not in etag else None, etag if "-" in etag else None)
        return entries

    def complete(self, rel: str, entry: Entry, like: Entry | None = None) -> Entry:
        """An object this store uploaded carries its sha256 in its metadata: read it when the manifest does not say (the
        sync that uploaded it was cut short before recording it)."""
        if entry.sha256 is None:
            head = self._call(self.client.head_object, Bucket=self.bucket, Key=self.key(rel))
            sha = head.get("Metadata", {}).get("sha256")
            if sha:
                return replace(entry, sha256=sha)
        return entry

    def download(self, rel: str, dest: Path, expected: Entry, progress: Progress) -> Entry:
        url = f"{self.url}/{rel}"
        verifier = Verifier(url, expected)
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self.key(rel))
            with atomic_destination(dest) as sink:
                for block in response["Body"].iter_chunks(CHUNK):
                    sink.write(block)
                    verifier.update(block)
                    progress(len(block))
                return verifier.check()
        except SyncError:
            raise
        except Exception as exc:  # botocore's own checksum or transport errors
            raise explain(url, exc) from exc

    def upload(self, rel: str, src: Path, entry: Entry, progress: Progress) -> Entry:
        if _local_size(src, entry) >= MULTIPART_THRESHOLD:
            return self._multipart(rel, src, entry, progress)
        body = src.read_bytes()  # the digest of the bytes actually sent; the server verifies it
        sha = hashlib.sha256(body)
        if entry.sha256 and sha.hexdigest() != entry.sha256:
            raise SyncError(f"{src}: changed while syncing; run the sync again")
        self._call(self.client.put_object, Bucket=self.bucket, Key=self.key(rel), Body=body,
                   ChecksumSHA256=base64.b64encode(sha.digest()).decode(), Metadata={"sha256": sha.hexdigest()})
        progress(len(body))
        return Entry(len(body), sha.hexdigest())

    def _multipart(self, rel: str, src: Path, entry: Entry, progress: Progress) -> Entry:
        """Parts go up in parallel; the upload id is kept locally, keyed by the file's content, so a
        rerun lists the parts the server already holds and sends only the rest."""
        key = self.key(rel)
        if entry.sha256 is None:
            entry = file_digests(src)
        size = _local_size(src, entry)
        state_path = state_dir() / (hashlib.sha256(f"{self.bucket}/{key}:{size}:{entry.sha256}".encode()).hexdigest() + ".json")
        done = self._resume(state_path, key)
        if done is None:
            upload = self._call(self.client.create_multipart_upload, Bucket=self.bucket, Key=key, Metadata={"sha256": entry.sha256})
            state = {"bucket": self.bucket, "key": key, "upload_id": upload["UploadId"], "part_size": configured_part_size()}
            state_path.parent.mkdir(parents=True, exist_ok=True)
            state_path.write_text(json.dumps(state))
            done = (state, {})
        state, parts = done
        part_size = state["part_size"]
        count = -(-size // part_size)

        def send(number: int) -> None:
            with open(src, "rb") as handle:
                handle.seek((number - 1) * part_size)
                body = handle.read(part_size)
            reply = self._call(self.client.upload_part, Bucket=self.bucket, Key=key, UploadId=state["upload_id"], PartNumber=number,
                               Body=body, ContentMD5=base64.b64encode(hashlib.md5(body).digest()).decode())
            with self._lock:
                parts[number] = reply["ETag"]
            progress(len(body))

        with ThreadPoolExecutor(PART_WORKERS) as pool:
            list(pool.map(send, [n for n in range(1, count + 1) if n not in parts]))
        self._call(self.client.complete_multipart_upload, Bucket=self.bucket, Key=key, UploadId=state["upload_id"],
                   MultipartUpload={"Parts": [{"PartNumber": n, "ETag": parts[n]} for n in sorted(parts)]})
        state_path.unlink(missing_ok=True)
        return Entry(size, entry.sha256, None)

    def _resume(self, state_path: Path, key: str) -> tuple[dict, dict[int, str]] | None:
        """The parts the server already holds for an interrupted upload of this exact file."""
        if not state_path.is_file():
            return None
        state = json.loads(state_path.read_text())
        parts: dict[int, str] = {}
        try:
            for page in self.client.get_paginator("list_parts").paginate(Bucket=self.bucket, Key=key, UploadId=state["upload_id"]):
                parts.update({p["PartNumber"]: p["ETag"] for p in page.get("Parts", [])})
        except self.client.exceptions.NoSuchUpload:
            state_path.unlink(missing_ok=True)
            return None
        except Exception as exc:
            raise explain(self.url, exc) from exc
        return state, parts

    def delete(self, rel: str) -> None:
        self._call(self.client.delete_object, Bucket=self.bucket, Key=self.key(rel))

    def commit(self, entries: dict[str, Entry]) -> None:
        """Write the content manifest -- only when it changed: a sync of unchanged data writes nothing."""
        objects = self._objects()
        files = {
            rel: {"size": e.size, "sha256": e.sha256, "etag": objects[rel]["ETag"].strip('"')}
            for rel, e in entries.items() if rel in objects and e.sha256
        }
        if files == self._recorded:
            return
        self._recorded = files
        self._call(self.client.put_object, Bucket=self.bucket, Key=self.key(SYNC_MANIFEST),
                   Body=json.dumps({"version": 1, "files": files}, sort_keys=True).encode(), ContentType="application/json")
