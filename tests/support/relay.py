"""A small threaded TCP relay: ``listen`` address -> ``target`` address.

The cluster tests need it because the machine's RabbitMQ listens on loopback only:
worker hosts in their own network namespaces reach it through a relay on the bridge
address. It can also *hang* (``pause()``): bytes stop flowing both ways and new
connections get no answer, but nothing is closed or refused — what a client sees when
the packets of a partitioned link vanish.
"""

from __future__ import annotations

import contextlib
import socket
import threading

CHUNK = 65536


class TcpRelay:
    """Forward every connection to ``listen`` to ``target``, until ``close()``."""

    def __init__(self, listen: tuple[str, int], target: tuple[str, int]) -> None:
        self.target = target
        self._listener = socket.create_server(listen, reuse_port=False)
        self.address: tuple[str, int] = self._listener.getsockname()[:2]
        self._flowing = threading.Event()
        self._flowing.set()
        self._closed = threading.Event()
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, name="relay-accept", daemon=True).start()

    def pause(self) -> None:
        """Hang every connection, open or new: nothing is forwarded, nothing closed."""
        self._flowing.clear()

    def resume(self) -> None:
        self._flowing.set()

    def close(self) -> None:
        self._closed.set()
        self._flowing.set()
        with self._lock:
            sockets, self._sockets = [self._listener, *self._sockets], []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def __enter__(self) -> TcpRelay:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _track(self, sock: socket.socket) -> bool:
        with self._lock:
            if self._closed.is_set():
                sock.close()
                return False
            self._sockets.append(sock)
            return True

    def _forget(self, *sockets: socket.socket) -> None:
        with self._lock:
            self._sockets = [sock for sock in self._sockets if sock not in sockets]
        for sock in sockets:
            sock.close()

    def _wait_flowing(self) -> bool:
        """Block while paused (close() resumes); False once the relay is closed."""
        self._flowing.wait()
        return not self._closed.is_set()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self._track(client):
                threading.Thread(target=self._connect, args=(client,), daemon=True).start()

    def _connect(self, client: socket.socket) -> None:
        if not self._wait_flowing():
            return
        try:
            upstream = socket.create_connection(self.target, timeout=10)
        except OSError:
            client.close()
            return
        upstream.settimeout(None)
        if not self._track(upstream):
            client.close()
            return
        back = threading.Thread(target=self._pump, args=(upstream, client), daemon=True)
        back.start()
        self._pump(client, upstream)
        back.join()
        self._forget(client, upstream)

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(CHUNK):
                if not self._wait_flowing():
                    return
                sink.sendall(data)
            sink.shutdown(socket.SHUT_WR)
        except OSError:
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_RDWR)
