"""The result store's objects on any fsspec filesystem: write, read and verify, delete.

:class:`ObjectStore` is synchronous and thread-safe; asyncio callers run it in
a thread. It serves every backend the same way: a local folder (the default,
also the coordinator-hosted store), a shared filesystem path, S3-compatible
object storage through ``s3fs`` (``s3://bucket/prefix``), or anything else
fsspec opens. Credentials are never part of the URL or options that travel:
each process takes them from its own environment (for S3 the usual
``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_PROFILE``, config files
and instance roles, as botocore finds them).

Stored objects are pickled arguments and results, so on a local or shared
filesystem every object is created readable by its owner only (0600) and
every folder made for it 0700, whatever the writing process's umask (workers
and clients write too, not only the coordinator). Object stores (S3) have no
file modes: their bucket policy decides.
"""

from __future__ import annotations

import contextlib
import datetime
import io
import json
import os
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO

import cloudpickle
import fsspec
from fsspec.implementations.local import LocalFileSystem

from fleetflow.errors import StoredObjectCorrupt, StoredObjectMissing
from fleetflow.store.codec import (
    Frame,
    FrameError,
    PickledItems,
    decode_frame,
    frame_size,
    materialize,
    new_hasher,
)
from fleetflow.store.refs import StoredItem, StoredRef, valid_key

__all__ = ["ObjectStore", "ObjectInfo", "StoreMarker", "StoreSpec", "open_spec", "MARKER_NAME"]

#: The file at a hosted store's root whose text identifies it (see StoreInfo).
MARKER_NAME = ".fleetflow-store"
#: Bytes per read when streaming an object out.
READ_CHUNK = 1 << 20
#: Modes of what the store creates on a local filesystem (see the module docstring).
FILE_MODE = 0o600
DIR_MODE = 0o700
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)


def private_dirs(directory: str) -> None:
    """Create ``directory`` and its missing parents 0700; existing ones are left as they are."""
    if os.path.isdir(directory):
        return
    parent = os.path.dirname(directory)
    if parent and parent != directory:
        private_dirs(parent)
    with contextlib.suppress(FileExistsError):
        os.mkdir(directory, DIR_MODE)


def _create_private(path: str) -> BinaryIO:
    """A new file at ``path``, open for writing, mode 0600 (it must not exist)."""
    return os.fdopen(os.open(path, _CREATE, FILE_MODE), "wb")


@dataclass(frozen=True)
class ObjectInfo:
    """One object as listed: key, size (bytes), last modification (seconds since the epoch)."""

    key: str
    size: int
    mtime: float


class ObjectStore:
    """Objects under one root of an fsspec filesystem.

    Args:
        url: The root: a path (``/data/ff``, ``.fleetflow/results``), a
            ``file://`` URL, ``s3://bucket/prefix`` or another fsspec URL.
        options: fsspec storage options (e.g. ``{"endpoint_url": ...}`` for
            an S3-compatible server); no credentials (see the module docstring).

    Raises:
        ValueError: fsspec does not know the URL's protocol (e.g. ``s3://``
            without ``s3fs`` installed: the message says which package).
    """

    def __init__(self, url: str, options: dict[str, Any] | None = None) -> None:
        self.options = dict(options or {})
        try:
            fs, root = fsspec.core.url_to_fs(url, **self.options)
        except ImportError as exc:
            raise ValueError(f"result store {url!r}: {exc}") from None
        self.fs = fs
        self.local = isinstance(fs, LocalFileSystem)
        if self.local:
            root = os.path.abspath(root)
        self.root = root.rstrip("/")
        #: The root as a URL, for messages and for other processes.
        self.url = fs.unstrip_protocol(self.root) if not self.local else f"file://{self.root}"

    def __repr__(self) -> str:
        return f"ObjectStore({self.url!r})"

    # ---------------------------------------------------------------- naming

    def path(self, key: str) -> str:
        """The filesystem path of a key.

        Raises:
            ValueError: the key is not one a store accepts.
        """
        if not valid_key(key):
            raise ValueError(f"{key!r} is not a valid object key")
        return f"{self.root}/{key}"

    def url_of(self, key: str) -> str:
        """Where people find an object (``file:///...``, ``s3://...``)."""
        return f"{self.url}/{key}"

    # ---------------------------------------------------------------- writing

    def put(self, key: str, frame: Frame) -> StoredRef:
        """Write one frame as the object ``key``; returns its reference."""
        return self.put_pack(key, [frame])[0]

    def put_pack(self, key: str, frames: Sequence[Frame]) -> list[StoredRef]:
        """Write frames one after another as one object (a pack).

        The object appears whole or not at all: a local file is written under
        a temporary name and renamed; an S3 object exists once its upload
        completes.

        Returns:
            One reference per frame, with its offset in the object.

        Raises:
            OSError: the filesystem refused the write.
        """
        refs = []
        with self._writer(key) as out:
            offset = 0
            for frame in frames:
                hasher = new_hasher()
                for part in frame:
                    hasher.update(part)
                    out.write(part)
                size = frame_size(frame)
                refs.append(StoredRef(key, size, hasher.digest(), offset))
                offset += size
        return refs

    @contextlib.contextmanager
    def _writer(self, key: str) -> Iterator[BinaryIO]:
        path = self.path(key)
        if self.local:
            directory = os.path.dirname(path)
            private_dirs(directory)
            tmp = os.path.join(directory, f".tmp-{uuid.uuid4().hex}")
            try:
                with _create_private(tmp) as out:
                    yield out
                os.replace(tmp, path)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
            return
        with self.fs.open(path, "wb") as out:
            yield out

    @contextlib.contextmanager
    def raw_writer(self, key: str) -> Iterator[BinaryIO]:
        """Write an object's bytes as they arrive (uploads); visible once the block ends."""
        with self._writer(key) as out:
            yield out

    # ---------------------------------------------------------------- reading

    def _open(self, key: str, offset: int) -> BinaryIO:
        path = self.path(key)
        try:
            if self.local:
                f: BinaryIO = open(path, "rb")  # noqa: SIM115 - closed by the caller
            else:
                f = self.fs.open(path, "rb")
        except FileNotFoundError:
            raise StoredObjectMissing(key, self.url_of(key), "not found") from None
        if offset:
            f.seek(offset)
        return f

    def load(self, ref: StoredRef) -> Any:
        """Read, verify and rebuild a stored value.

        Raises:
            StoredObjectMissing: the object is not there.
            StoredObjectCorrupt: its bytes are not what was written (size or checksum).
            Exception: what unpickling raises (e.g. a class not importable here).
        """
        with self._open(ref.key, ref.offset) as f:
            decoded = self._decode(f, ref)
        return materialize(decoded)

    def _decode(self, f: BinaryIO, ref: StoredRef) -> Any:
        def read(n: int, writable: bool) -> Any:
            if not writable:
                return f.read(n)
            buffer = bytearray(n)
            view = memoryview(buffer)
            got = 0
            while got < n:
                k = f.readinto(view[got:])  # type: ignore[attr-defined]
                if not k:
                    return buffer[:got]
                got += k
            return buffer

        where = self.url_of(ref.key)
        try:
            decoded, digest = decode_frame(read, ref.size)
        except FrameError as exc:
            raise StoredObjectCorrupt(ref.key, where, f"{exc} (at offset {ref.offset})") from None
        if digest != ref.checksum:
            raise StoredObjectCorrupt(
                ref.key,
                where,
                f"checksum mismatch: expected {ref.checksum.hex()}, read {digest.hex()} "
                f"({ref.size} bytes at offset {ref.offset})",
            )
        return decoded

    def load_chunk(self, ref: StoredRef) -> Sequence[Any]:
        """A chunk of a stored list, as a sequence of its items.

        Raises:
            StoredObjectMissing: the chunk is not there.
            StoredObjectCorrupt: it is damaged, or not a list.
        """
        chunk = self.load(ref)
        if not isinstance(chunk, list | PickledItems):
            raise StoredObjectCorrupt(ref.key, self.url_of(ref.key), "not a chunk of a list")
        return chunk

    def load_many(self, values: Sequence[Any]) -> list[Any]:
        """A fan-in's list: inline pickles unpickled, references read, each object once.

        References into the same object (a pack) are read with one read of
        that object, so 100,000 results in a few hundred packs cost a few
        hundred reads.

        Raises:
            StoredObjectMissing, StoredObjectCorrupt: as for :meth:`load`.
        """
        out: list[Any] = [None] * len(values)
        by_key: dict[str, list[int]] = {}
        for i, value in enumerate(values):
            if isinstance(value, StoredRef):
                by_key.setdefault(value.key, []).append(i)
            else:
                out[i] = cloudpickle.loads(value)
        for key, positions in by_key.items():
            if len(positions) == 1:
                out[positions[0]] = self.load(values[positions[0]])
                continue
            data = b"".join(self.read_raw(key))
            for i in positions:
                ref = values[i]
                reader = io.BytesIO(memoryview(data)[ref.offset : ref.offset + ref.size])
                out[i] = materialize(self._decode(reader, ref))  # type: ignore[arg-type]
        return out

    def load_item(self, item: StoredItem, cache: dict[Any, Any] | None = None) -> Any:
        """One item of a stored list (its chunk decoded, and kept in ``cache`` if given).

        Raises:
            StoredObjectMissing: the chunk is not there.
            StoredObjectCorrupt: the chunk is damaged, or too short for the position.
        """
        chunk = None if cache is None else cache.get(item.chunk)
        if chunk is None:
            chunk = self.load_chunk(item.chunk)
            if cache is not None:
                cache.clear()  # one chunk at a time: batches walk a map in order
                cache[item.chunk] = chunk
        try:
            return chunk[item.position]
        except (IndexError, TypeError):
            raise StoredObjectCorrupt(
                item.chunk.key,
                self.url_of(item.chunk.key),
                f"chunk has no item {item.position}",
            ) from None

    def read_raw(self, key: str, offset: int = 0, length: int = 0) -> Iterator[bytes]:
        """Yield an object's bytes from ``offset`` (``length`` bytes; 0: to the end) in chunks.

        Raises:
            StoredObjectMissing: the object is not there.
        """
        with self._open(key, offset) as f:
            left = length if length > 0 else -1
            while left != 0:
                data = f.read(READ_CHUNK if left < 0 else min(READ_CHUNK, left))
                if not data:
                    return
                if left > 0:
                    left -= len(data)
                yield data

    def exists(self, key: str) -> bool:
        """Whether the object is there."""
        return bool(self.fs.exists(self.path(key)))

    def size_of(self, key: str) -> int | None:
        """The object's size in bytes, None when it is not there."""
        try:
            return int(self.fs.size(self.path(key)))
        except FileNotFoundError:
            return None

    # ------------------------------------------------------- listing, deleting

    def list(self, prefix: str) -> list[ObjectInfo]:
        """Every object whose key starts with ``prefix/`` (``runs``, ``runs/<id>``)."""
        base = f"{self.root}/{prefix.strip('/')}"
        try:
            found = self.fs.find(base, detail=True)
        except FileNotFoundError:
            return []
        out = []
        cut = len(self.root) + 1
        for path, info in found.items():
            key = path[cut:] if path.startswith(self.root + "/") else path
            # unfinished local writes (".tmp-*") are listed too: a crash leaves them
            out.append(ObjectInfo(key, int(info.get("size") or 0), _mtime(info)))
        return out

    def top_level(self, prefix: str) -> list[str]:
        """Names directly under ``prefix`` (flow run ids under ``runs``)."""
        base = f"{self.root}/{prefix.strip('/')}"
        try:
            entries = self.fs.ls(base, detail=False)
        except FileNotFoundError:
            return []
        return sorted({str(e).rstrip("/").rsplit("/", 1)[-1] for e in entries})

    def delete_prefix(self, prefix: str) -> None:
        """Delete every object under ``prefix/`` (a flow run's, a submission's)."""
        base = f"{self.root}/{prefix.strip('/')}"
        if prefix.strip("/").count("/") < 1:
            raise ValueError(f"refusing to delete a whole top-level prefix {prefix!r}")
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm(base, recursive=True)

    def delete(self, keys: Sequence[str]) -> None:
        """Delete objects by key; missing ones are skipped."""
        for key in keys:
            directory, _, name = key.rpartition("/")
            if name.startswith(".tmp-") and valid_key(f"{directory}/x"):
                path = f"{self.root}/{key}"  # an unfinished write a crash left
            else:
                path = self.path(key)
            with contextlib.suppress(FileNotFoundError):
                self.fs.rm_file(path)


def _mtime(info: dict[str, Any]) -> float:
    value = info.get("mtime", info.get("LastModified", info.get("created")))
    if isinstance(value, datetime.datetime):
        return value.timestamp()
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0


@dataclass(frozen=True)
class StoreMarker:
    """The identity file of a coordinator-hosted store (``.fleetflow-store``).

    A worker or client on the coordinator's machine that reads the same id
    from the same path uses the folder directly instead of streaming over gRPC.
    """

    path: str
    store_id: str

    @classmethod
    def ensure(cls, root: str) -> StoreMarker:
        """Create the folder (0700) and its marker (0600) if needed; returns it.

        Raises:
            OSError: the folder cannot be created or written.
        """
        private_dirs(root)
        marker = os.path.join(root, MARKER_NAME)
        try:
            with open(marker) as f:
                store_id = f.read().strip()
        except FileNotFoundError:
            store_id = ""
        if not store_id:
            store_id = uuid.uuid4().hex
            tmp = f"{marker}.{store_id}.tmp"
            with _create_private(tmp) as f:
                f.write(store_id.encode() + b"\n")
            os.replace(tmp, marker)
        return cls(root, store_id)

    @staticmethod
    def visible(root: str, store_id: str) -> bool:
        """Whether ``root`` is the hosted store ``store_id`` and writable from here."""
        try:
            with open(os.path.join(root, MARKER_NAME)) as f:
                return f.read().strip() == store_id and os.access(root, os.W_OK)
        except OSError:
            return False


#: What a task process needs to open the store: ``(url, options)``.
StoreSpec = tuple[str, dict[str, Any]]

_OPEN: dict[str, ObjectStore] = {}


def open_spec(spec: StoreSpec) -> ObjectStore:
    """Open (once per process) the store a spec names."""
    url, options = spec
    cache_key = url + json.dumps(options, sort_keys=True) if options else url
    store = _OPEN.get(cache_key)
    if store is None:
        store = _OPEN[cache_key] = ObjectStore(url, options)
    return store
