"""Control requests between two services of one host without ZeroMQ: the direct channel.

Over ipc:// a ZeroMQ round trip passes each message through the sender's and the receiver's libzmq
I/O threads: four thread wake-ups per round trip more than two processes writing to each other,
and in a virtual machine those wake-ups cost more than everything else. So next to its ipc://
control inbox every service also listens on an AF_UNIX stream socket (`NAME.control` ->
`NAME.control.direct`: the same 0700 directory, the socket owner-only, a peer must run as the node's
user, SO_PEERCRED), and `Bus.request` and `Bus.post` use a connection of the calling thread's own
to it (`DirectLink`): the caller waits on its socket itself, and the service polls its connections
in the poller it polls its inboxes with (`DirectInbox`). tcp:// endpoints keep ZeroMQ and CURVE.

A connection carries exactly the control bus's frames, each message length-prefixed:
    message = u32 size, then `size` bytes of frames, each a u32 length and its bytes (big-endian)
The first message is a hello, [b"H", service name], which names the caller of every request on the
connection (as a DEALER's routing id does on ipc://); then requests and events [kind, id, name,
body] as on the control bus, and replies [b"R", id, status, body].
"""
from __future__ import annotations

import logging
import os
import select
import socket
import stat
import struct
import time
from typing import Callable


log = logging.getLogger("lnp.host.bus")

HELLO = b"H"
SUFFIX = ".direct"
MAX_MESSAGE = 256 * 1024 * 1024  # a larger size can only be a broken or hostile peer
READ_SIZE = 65536
SEND_BUFFER = 4 * 1024 * 1024  # events a busy service has not read yet wait here (the kernel may cap it)
_U32 = struct.Struct("!I")
_IN, _OUT, _ERR = select.POLLIN, select.POLLOUT, select.POLLERR | select.POLLHUP
_MAX_PATH = 107  # sun_path holds 108 bytes with the NUL


def direct_path(endpoint: str) -> str | None:
    """The direct socket of the service whose control inbox is `endpoint`; None when it has none
    (not ipc://, an abstract socket without file permissions, or a path too long for AF_UNIX)."""
    if not endpoint.startswith("ipc://") or endpoint.startswith("ipc://@"):
        return None
    path = endpoint[len("ipc://"):] + SUFFIX
    return path if len(os.fsencode(path)) <= _MAX_PATH else None


def pack(frames: list[bytes]) -> bytes:
    """One message of frames, as the direct channel carries it."""
    parts = [b""]
    size = 0
    for frame in frames:
        n = len(frame)
        parts += (_U32.pack(n), frame)
        size += 4 + n
    parts[0] = _U32.pack(size)
    return b"".join(parts)


def _frames(buf: bytes, pos: int, end: int) -> list[bytes] | None:
    """The frames of the message payload buf[pos:end]; None when they do not fill it exactly."""
    frames = []
    while pos < end:
        if end - pos < 4:
            return None
        (size,) = _U32.unpack_from(buf, pos)
        pos += 4
        if size > end - pos:
            return None
        frames.append(buf[pos:pos + size])
        pos += size
    return frames


class BadStream(ValueError):
    """A message larger than MAX_MESSAGE: the stream cannot be trusted any further."""


class Reader:
    """Cuts the bytes read from a connection into messages, each a list of frames (None for one whose
    frames do not fill it: dropped, while the messages after it are read on)."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, data: bytes) -> list[list[bytes] | None]:
        """The messages completed by `data` (BadStream for an oversized one)."""
        buf = self._buf + data if self._buf else data
        out, pos, end = [], 0, len(buf)
        while end - pos >= 4:
            (size,) = _U32.unpack_from(buf, pos)
            if size > MAX_MESSAGE:
                raise BadStream(f"a message of {size} bytes (at most {MAX_MESSAGE})")
            if end - pos - 4 < size:
                break
            out.append(_frames(buf, pos + 4, pos + 4 + size))
            pos += 4 + size
        self._buf = buf[pos:] if pos < end else b""
        return out


class LinkLost(ConnectionError):
    """The connection broke; `unsent` when no byte of the message left, so it may go again elsewhere."""

    def __init__(self, why: str, unsent: bool) -> None:
        super().__init__(why)
        self.unsent = unsent


class SendTimeout(TimeoutError):
    """The service did not take the message in time (it is not reading)."""


def _timeval(ms: int) -> bytes:
    return struct.pack("ll", ms // 1000, (ms % 1000) * 1000)


class DirectLink:
    """One thread's connection to one service's direct inbox, asking as `source`.

    Each wait (for room to write, for a reply) wakes at least every `wake_ms` to call its `check`,
    which raises to give up (the node is gone)."""

    def __init__(self, path: str, source: str, wake_ms: int) -> None:
        self._wake_ms = wake_ms
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._reader = Reader()
        self._pending: list[list[bytes] | None] = []  # messages read but not yet taken
        self._sndtimeo = wake_ms
        self._poll = select.poll()
        self._poll.register(self._sock, select.POLLIN)
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, _timeval(wake_ms))
            # OSError when nobody listens (yet), or a stopped service has a full backlog: the caller
            # uses ZeroMQ instead, which waits for it
            self._sock.setblocking(False)
            self._sock.connect(path)
            self._sock.setblocking(True)  # writes wait at most SO_SNDTIMEO, replies are polled for
            self._sock.sendall(pack([HELLO, source.encode()]))
        except BaseException:
            self._sock.close()
            raise
        self.open = True

    def close(self) -> None:
        """Close the connection (the service sees it end)."""
        self.open = False
        self._sock.close()

    def _send_timeout(self, ms: int) -> None:
        ms = max(min(ms, self._wake_ms), 1)
        if self._sndtimeo != ms:  # a system call only when it changes
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, _timeval(ms))
            self._sndtimeo = ms

    def send(self, frames: list[bytes], deadline: float, check: Callable[[], None]) -> None:
        """Write one message, waiting for room until `deadline` (SendTimeout; LinkLost)."""
        data = pack(frames)
        sent = self._write(data, 0, socket.MSG_DONTWAIT)  # it fits at once but when the service lags
        if sent == len(data):
            return
        view = memoryview(data)
        while sent < len(data):
            try:
                check()
            except BaseException:
                if sent:
                    self.close()  # half a message: the stream is unusable
                raise
            remaining_ms = int((deadline - time.monotonic()) * 1000)
            if remaining_ms <= 0:
                if sent:
                    self.close()
                raise SendTimeout()
            self._send_timeout(remaining_ms)
            sent += self._write(view[sent:], sent, 0)

    def _write(self, data: bytes | memoryview, sent: int, flags: int) -> int:
        """Bytes of `data` the kernel took (0 when it had no room); LinkLost when the service is gone."""
        try:
            return self._sock.send(data, flags)
        except BlockingIOError:
            return 0
        except OSError as e:
            self.close()
            raise LinkLost("closed the connection", unsent=sent == 0) from e

    def receive(self, rid: bytes, deadline: float, check: Callable[[], None]) -> list[bytes] | None:
        """The reply [b"R", rid, status, body] to request `rid`, skipping late replies to earlier
        requests (and anything malformed, as the bus does); None at `deadline`; LinkLost when the
        service closed the connection."""
        while True:
            while self._pending:
                frames = self._pending.pop(0)
                if frames is not None and len(frames) == 4 and frames[1] == rid:
                    return frames
            remaining_ms = int((deadline - time.monotonic()) * 1000)
            if remaining_ms <= 0:
                return None
            # poll, not a blocking recv: the service reading our request wakes whoever sleeps in a
            # recv on this socket (it made room to write), which poll filters out; one wake-up less
            if not self._poll.poll(min(remaining_ms, self._wake_ms)):
                check()
                continue
            try:
                data = self._sock.recv(READ_SIZE, socket.MSG_DONTWAIT)
            except BlockingIOError:
                continue
            except OSError as e:
                self.close()
                raise LinkLost("closed the connection", unsent=False) from e
            if not data:
                self.close()
                raise LinkLost("closed the connection", unsent=False)
            try:
                self._pending = self._reader.feed(data)
            except BadStream as e:
                self.close()
                raise LinkLost(f"sent a bad stream: {e}", unsent=False) from None


class _Conn:
    """One caller's connection, on the service's side."""

    __slots__ = ("sock", "fd", "reader", "caller", "out", "closed")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.reader = Reader()
        self.caller: str | None = None  # named by its hello
        self.out = b""                   # reply bytes the caller has not taken yet
        self.closed = False


# what the service does with a control message: (frames [kind, id, name, body], caller, reply)
Reply = Callable[[bytes, bytes], None]
OnMessage = Callable[[list[bytes], "str | None", "Reply | None"], None]


class DirectInbox:
    """A service's direct inbox: its listening socket and callers' connections, all served from the
    service's own thread through `ready` when the service's `select.poll` reports one of them
    (`register` and `unregister` are that poll object's)."""

    def __init__(self, path: str, on_message: OnMessage, register: Callable[[int, int], None],
                 unregister: Callable[[int], None]) -> None:
        self._on_message = on_message
        self._register, self._unregister = register, unregister
        self._conns: dict[int, _Conn] = {}
        if os.path.exists(path) or os.path.islink(path):
            os.unlink(path)  # a socket left by an earlier run
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._listener.bind(path)
            # owner-only, as the node's umask 077 makes it and the ipc:// sockets: said again in case
            os.chmod(path, stat.S_IMODE(os.stat(path).st_mode) & 0o700)
            self._listener.listen(64)
            self._listener.setblocking(False)
        except BaseException:
            self._listener.close()
            raise
        self._path = path
        self.listen_fd = self._listener.fileno()
        register(self.listen_fd, _IN)

    def owns(self, fd: int) -> bool:
        """True for the listening socket and the connections."""
        return fd == self.listen_fd or fd in self._conns

    def ready(self, fd: int, events: int) -> None:
        """Serve what the poller reported for `fd`."""
        if fd == self.listen_fd:
            self._accept()
            return
        conn = self._conns.get(fd)
        if conn is None:
            return
        if events & _OUT:
            self._flush(conn)
        if events & (_IN | _ERR) and not conn.out and not conn.closed:
            self._read(conn)

    def close(self) -> None:
        """Close the listener and every connection, and remove the socket file."""
        for conn in list(self._conns.values()):
            self._drop(conn)
        self._unregister(self.listen_fd)
        self._listener.close()
        try:
            os.unlink(self._path)
        except OSError:
            pass

    def _accept(self) -> None:
        for _ in range(16):  # a few at a time: the service has other work too
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # out of descriptors, say: the caller falls back to ZeroMQ
                log.warning("could not accept a direct connection: %s", e)
                return
            uid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[1]
            if uid != os.getuid():  # the 0700 directory already keeps others out; this says so twice
                log.warning("refused a direct connection from uid %d", uid)
                sock.close()
                continue
            sock.setblocking(False)
            conn = _Conn(sock)
            self._conns[conn.fd] = conn
            self._register(conn.fd, _IN)

    def _read(self, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:  # the caller is gone (its thread ended, its process died)
            self._drop(conn)
            return
        try:
            messages = conn.reader.feed(data)
        except BadStream as e:
            log.warning("closed a direct connection that sent %s", e)
            self._drop(conn)
            return
        for frames in messages:
            if conn.caller is None:
                if frames is None or len(frames) != 2 or frames[0] != HELLO or not frames[1].isascii():
                    log.warning("closed a direct connection that did not start with a hello")
                    self._drop(conn)
                    return
                conn.caller = frames[1].decode("ascii")
                continue
            if frames is None:
                log.warning("dropped a malformed control message (frames do not fill it)")
                continue
            reply = None
            if len(frames) == 4:
                rid = frames[1]
                reply = lambda status, raw, c=conn, rid=rid: self._send(c, [b"R", rid, status, raw])  # noqa: E731
            try:
                self._on_message(frames, conn.caller, reply)
            except Exception:  # one bad message must not cost the ones read with it
                log.exception("unexpected error handling a direct control message; serving on")
            if conn.closed:
                return

    def _send(self, conn: _Conn, frames: list[bytes]) -> None:
        if conn.closed:
            return  # the caller left before its answer: nobody waits for it
        data = pack(frames)
        if conn.out:
            conn.out += data
            return
        try:
            sent = conn.sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self._drop(conn)
            return
        if sent < len(data):  # the caller reads slowly: the rest goes when it can, and until then
            conn.out = data[sent:]  # nothing more is read from it (it cannot make this service buffer)
            self._register(conn.fd, _OUT)

    def _flush(self, conn: _Conn) -> None:
        try:
            sent = conn.sock.send(conn.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(conn)
            return
        conn.out = conn.out[sent:]
        if not conn.out:
            self._register(conn.fd, _IN)

    def _drop(self, conn: _Conn) -> None:
        conn.closed = True
        self._conns.pop(conn.fd, None)
        self._unregister(conn.fd)
        conn.sock.close()
