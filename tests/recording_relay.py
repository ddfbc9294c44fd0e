"""A relay that forwards loopback connections and records every byte, both ways: what an
eavesdropper on the wire would see (shared by the tests of petlab's TLS and of the PSI link)."""

from __future__ import annotations

import socket
import threading
import time


class RecordingRelay:
    """Forwards each connection to ``target`` (host, port) and keeps every byte in
    ``recorded``; waits up to ``timeout_s`` for the target to listen."""

    def __init__(self, target: tuple[str, int], *, timeout_s: float = 10.0):
        self.target, self.timeout_s, self.recorded, self.lock = target, timeout_s, bytearray(), threading.Lock()
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            deadline = time.monotonic() + self.timeout_s
            while True:  # the listening party may not be listening yet
                try:
                    upstream = socket.create_connection(self.target)
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        client.close()
                        return
                    time.sleep(0.02)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src, dst):
        try:
            while chunk := src.recv(1 << 16):
                with self.lock:
                    self.recorded += chunk
                dst.sendall(chunk)
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self):
        self.server.close()
