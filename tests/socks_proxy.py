"""A small SOCKS5 proxy (CONNECT, no authentication) on loopback for tests, in its own thread.

It records each requested target and can map names (such as .onion addresses) to local ports,
standing in for Tor.
"""
from __future__ import annotations

import ipaddress
import socket
import threading


class Socks5Proxy:
    """`with Socks5Proxy({"name.onion": ("127.0.0.1", port)}) as proxy:` ... `proxy.requests`."""

    def __init__(self, names: dict[str, tuple[str, int]] | None = None) -> None:
        self.names = names or {}
        self.requests: list[tuple[str, int]] = []
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> "Socks5Proxy":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.server.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept()
        except OSError:
            pass
        self.server.close()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(client,), daemon=True).start()

    def _handle(self, client: socket.socket) -> None:
        upstream: socket.socket | None = None
        try:
            def exactly(n: int) -> bytes:
                out = b""
                while len(out) < n:
                    chunk = client.recv(n - len(out))
                    if not chunk:
                        raise EOFError
                    out += chunk
                return out

            version, count = exactly(2)
            methods = exactly(count)
            if version != 5 or 0 not in methods:
                client.sendall(b"\x05\xff")
                return
            client.sendall(b"\x05\x00")
            _, cmd, _, atyp = exactly(4)
            if atyp == 1:
                host = str(ipaddress.IPv4Address(exactly(4)))
            elif atyp == 4:
                host = str(ipaddress.IPv6Address(exactly(16)))
            else:
                host = exactly(exactly(1)[0]).decode()
            port = int.from_bytes(exactly(2), "big")
            self.requests.append((host, port))
            target = self.names.get(host, (host, port))
            try:
                upstream = socket.create_connection(target, timeout=5)
            except OSError:
                client.sendall(b"\x05\x05\x00\x01" + bytes(6))  # connection refused
                return
            upstream.settimeout(None)
            client.sendall(b"\x05\x00\x00\x01" + bytes(6))
            back = threading.Thread(target=_pipe, args=(upstream, client), daemon=True)
            back.start()
            _pipe(client, upstream)
            back.join(10)  # the target sees our EOF and closes its side too
        except (OSError, EOFError):
            pass
        finally:
            client.close()
            if upstream is not None:
                upstream.close()


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass
