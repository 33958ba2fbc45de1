"""A loopback TCP server that answers HTTP requests with whatever bytes a test chooses."""

import socket
import threading
import time


class RawServer:
    """A TCP server whose reply to each request is chosen by the test: ``answer(n) -> list of
    (bytes, pause_s)`` chunks; ``close_after`` True closes the connection after answering."""

    def __init__(self, answer, close_after=False):
        self.answer = answer
        self.close_after = close_after
        self.requests = 0
        self.heads: list[bytes] = []  # each request's request line and header section, as received
        self.connections = 0
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        self.sock.settimeout(0.2)
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn):
        buffer = b""
        with conn:
            while not self.stop.is_set():
                try:
                    data = conn.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                buffer += data
                while b"\r\n\r\n" in buffer:
                    head, _, rest = buffer.partition(b"\r\n\r\n")
                    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                                   if line.lower().startswith(b"content-length")), 0)
                    if len(rest) < length:
                        break
                    buffer = rest[length:]
                    self.heads.append(head)
                    self.requests += 1
                    for chunk, pause in self.answer(self.requests):
                        time.sleep(pause)
                        try:
                            conn.sendall(chunk)
                        except OSError:
                            return
                    if self.close_after:
                        return

    def close(self):
        self.stop.set()
        self.sock.close()
