"""The worker's end of a task process's pipe, driven from the event loop.

A task process talks :class:`multiprocessing.connection.Connection` framing
(a 4-byte big-endian signed length, or -1 and an 8-byte length, then a
pickle). :class:`LoopChannel` speaks the same framing over a second handle
on the worker's end (a duplicate of the descriptor, non-blocking: the event
loop makes it so anyway, and the two handles share that setting, so the
blocking ``Connection`` calls are not used once a process runs attempts),
and the pool needs no thread per attempt:

* :meth:`LoopChannel.send` writes what the socket takes at once (all of a
  small request) and the rest whenever the loop sees room (``add_writer``),
  so the loop never waits on a slow reader;
* :meth:`LoopChannel.listen` reads on the loop (``add_reader``): whole
  messages go to a callback as they complete, in order, and the end of the
  stream (the process died or was killed) to another, after every message
  read before it.

The duplicate is only ever closed on the loop (:meth:`LoopChannel.close`),
after its reader is removed, so a descriptor number that a thread frees and
the kernel hands out again can never be read or unregistered by mistake.
"""

from __future__ import annotations

import asyncio
import os
import pickle
import socket
import struct
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.reduction import ForkingPickler
from typing import Any

__all__ = ["LoopChannel"]

#: Most bytes read per readiness callback (a big message takes several).
_READ_BYTES = 1 << 18
#: Above this a length takes the 8-byte form (as ``Connection`` writes it).
_SHORT_MAX = 0x7FFFFFFF


class LoopChannel:
    """Non-blocking sends and loop-driven reads on a task process's pipe.

    Args:
        conn: The worker's end of the pipe (a socket pair on Linux); its
            owner still closes it, and no longer reads or writes it.
    """

    def __init__(self, conn: Connection) -> None:
        self._sock = socket.socket(fileno=os.dup(conn.fileno()))
        self._sock.setblocking(False)
        self._fd = self._sock.fileno()
        self._buffer = bytearray()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._on_message: Callable[[Any], None] | None = None
        self._on_end: Callable[[BaseException], None] | None = None
        #: What a big message still has to write, and the future of its end.
        self._unsent: memoryview | None = None
        self._written: asyncio.Future[None] | None = None
        self._closed = False

    def send(self, message: Any) -> asyncio.Future[None] | None:
        """Pickle and send ``message``; on the loop, never blocking it.

        Returns:
            None when it was written at once; else a future done once the
            rest is written (its exception: the pipe broke meanwhile).

        Raises:
            OSError: the pipe broke (the process is gone), or the channel is
                closed or still writing an earlier message.
        """
        if self._closed or self._unsent is not None:
            raise OSError("the task process's pipe is closed or busy")
        data = ForkingPickler.dumps(message)
        size = len(data)
        header = struct.pack("!i", size) if size <= _SHORT_MAX else struct.pack("!iQ", -1, size)
        try:
            sent = self._sock.sendmsg([header, data])
        except (BlockingIOError, InterruptedError):
            sent = 0
        if sent >= len(header) + size:
            return None
        if sent < len(header):
            self._unsent = memoryview(header[sent:] + bytes(data))
        else:
            self._unsent = memoryview(data)[sent - len(header) :]
        loop = self._loop = asyncio.get_running_loop()
        self._written = loop.create_future()
        loop.add_writer(self._fd, self._writable)
        return self._written

    def _writable(self) -> None:
        unsent, written = self._unsent, self._written
        assert unsent is not None and written is not None
        try:
            sent = self._sock.send(unsent)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._stop_writing()
            written.set_exception(exc)
            return
        if sent < len(unsent):
            self._unsent = unsent[sent:]
            return
        self._stop_writing()
        written.set_result(None)

    def _stop_writing(self) -> None:
        if self._unsent is not None and self._loop is not None:
            self._loop.remove_writer(self._fd)
        self._unsent = None
        written, self._written = self._written, None
        if written is not None and not written.done():
            written.cancel()

    def listen(
        self, on_message: Callable[[Any], None], on_end: Callable[[BaseException], None]
    ) -> None:
        """Deliver each message read to ``on_message`` until :meth:`stop` or the end.

        ``on_end`` gets :class:`EOFError` when the process closed its end (it
        exited or was killed) or the :class:`OSError` that broke the pipe;
        reading stops first. Both run on the loop.
        """
        if self._closed:
            raise OSError("the task process's pipe is closed")
        self._loop = asyncio.get_running_loop()
        self._on_message, self._on_end = on_message, on_end
        self._loop.add_reader(self._fd, self._readable)

    def stop(self) -> None:
        """Stop reading, and writing what is left to write (no callback runs after this)."""
        if self._on_message is not None and self._loop is not None:
            self._loop.remove_reader(self._fd)
        self._on_message = self._on_end = None
        self._stop_writing()

    def close(self) -> None:
        """Stop reading (a listener gets :class:`EOFError`) and close the handle; on the loop."""
        if self._closed:
            return
        on_end = self._on_end
        self.stop()
        self._closed = True
        self._sock.close()
        if on_end is not None:
            on_end(EOFError("the task process's pipe was closed"))

    def _readable(self) -> None:
        try:
            chunk = self._sock.recv(_READ_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._end(exc)
            return
        if not chunk:
            self._end(EOFError("the task process closed its pipe"))
            return
        buffer = self._buffer
        buffer += chunk
        while self._on_message is not None:
            message = self._next(buffer)
            if message is _NOTHING:
                return
            try:
                self._on_message(message)
            except Exception as exc:  # noqa: BLE001 - a caller's bug: report it, read on
                assert self._loop is not None
                self._loop.call_exception_handler(
                    {"message": "task process message handler failed", "exception": exc}
                )

    def _end(self, exc: BaseException) -> None:
        on_end = self._on_end
        self.stop()
        if on_end is not None:
            on_end(exc)

    @staticmethod
    def _next(buffer: bytearray) -> Any:
        """Take one whole message off the front of ``buffer`` (``_NOTHING``: none yet)."""
        have = len(buffer)
        if have < 4:
            return _NOTHING
        (size,) = struct.unpack_from("!i", buffer)
        start = 4
        if size == -1:
            if have < 12:
                return _NOTHING
            (size,) = struct.unpack_from("!Q", buffer, 4)
            start = 12
        end = start + size
        if have < end:
            return _NOTHING
        with memoryview(buffer) as view, view[start:end] as frame:
            message = pickle.loads(frame)
        del buffer[:end]
        return message


#: What :meth:`LoopChannel._next` returns when no whole message is buffered.
_NOTHING: Any = object()
