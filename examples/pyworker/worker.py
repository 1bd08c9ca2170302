#!/usr/bin/env python3
"""A mini-cluster worker in Python, standard library only.

It speaks the systemd protocols, so it runs unchanged under mini-cluster or
systemd: it serves the first descriptor passed by socket activation
(LISTEN_FDS, checked against LISTEN_PID), reports READY=1 on NOTIFY_SOCKET
once it accepts, and on SIGTERM closes (never shuts down) the shared
listener, finishes the request in hand and exits.

    go build -o /tmp/mc ./cmd/mini-cluster
    /tmp/mc -n 2 -listen 127.0.0.1:8080 -- python3 examples/pyworker/worker.py
"""

import os
import signal
import socket
import sys

SD_LISTEN_FDS_START = 3


def listen_fds():
    """Return the activated descriptors, or [] if they are not ours."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        return []
    try:
        n = int(os.environ.get("LISTEN_FDS", ""))
    except ValueError:
        return []
    if n < 0 or n > 1024:
        return []
    return list(range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + n))


def notify(state):
    """sd_notify(3): one datagram to NOTIFY_SOCKET; '@' means abstract."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return
    if addr[0] == "@":
        addr = "\0" + addr[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
        s.connect(addr)
        s.sendall(state.encode())


stopping = False


def on_term(signum, frame):
    global stopping
    stopping = True


def main():
    fds = listen_fds()
    if not fds:
        print("worker.py: no LISTEN_FDS for this process; run it under mini-cluster", file=sys.stderr)
        return 1
    ln = socket.socket(fileno=fds[0])
    # The master hands sockets over in blocking mode, as systemd does; a
    # timeout lets the loop notice SIGTERM without depending on that.
    ln.settimeout(0.2)
    for fd in fds[1:]:
        os.close(fd)  # only the first socket is served
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    worker = os.environ.get("HANDOFF_WORKER_ID", "-")
    gen = os.environ.get("HANDOFF_WORKER_GENERATION", "-")
    body = ("hello from python pid %d (worker %s, generation %s)\n" % (os.getpid(), worker, gen)).encode()
    notify("READY=1\nSTATUS=python worker serving")
    print("worker.py: pid %d serving" % os.getpid(), flush=True)
    while not stopping:
        try:
            conn, _ = ln.accept()
        except (socket.timeout, InterruptedError):
            continue
        with conn:
            conn.settimeout(5)
            try:
                data = b""
                while b"\r\n\r\n" not in data and len(data) < 65536:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n"
                             b"X-Worker: %d:%s\r\nContent-Length: %d\r\n\r\n" % (os.getpid(), gen.encode(), len(body)) + body)
            except OSError:
                pass
    notify("STOPPING=1")
    ln.close()  # close(2), not shutdown(2): siblings keep accepting
    return 0


if __name__ == "__main__":
    sys.exit(main())
