#!/usr/bin/env python3
"""A mini-cluster worker in Python, standard library only.

It speaks the systemd protocols, so it runs unchanged under mini-cluster or
systemd: it serves the first descriptor passed by socket activation
(LISTEN_FDS, checked against LISTEN_PID), reports READY=1 on NOTIFY_SOCKET
once it accepts, sends WATCHDOG=1 from its accept loop when WATCHDOG_USEC
asks for it (mini-cluster -heartbeat, systemd WatchdogSec=), and on SIGTERM
closes (never shuts down) the shared listener, finishes the request in hand
and exits 0.

Failures to notify are logged once and otherwise ignored, as sd_notify(3)
callers do; failed accepts (EMFILE, ECONNABORTED, ...) are logged and
retried after a pause that doubles from 5 ms to at most 1 s.

    go build -o /tmp/mc ./cmd/mini-cluster
    /tmp/mc -n 2 -listen 127.0.0.1:8080 -- python3 examples/pyworker/worker.py
"""

import os
import signal
import socket
import sys
import time

SD_LISTEN_FDS_START = 3

# The longest the loop blocks in one call, so that it notices SIGTERM: a
# signal handler only sets a flag, and Python resumes an interrupted call.
POLL = 0.2
# Bounds one notification: a datagram to a receiver whose queue is full
# blocks the sender.
NOTIFY_TIMEOUT = 1.0
# Bounds one request, from accept to the last byte of the answer.
REQUEST_TIMEOUT = 5.0
BACKOFF_MIN = 0.005
BACKOFF_MAX = 1.0

stopping = False
notify_failed = False


def say(stream, msg):
    """One line on stream; a closed pipe (the master is gone) is ignored."""
    try:
        print("worker.py: " + msg, file=stream, flush=True)
    except (OSError, ValueError):
        pass


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
    """sd_notify(3): one datagram to NOTIFY_SOCKET; '@' means abstract.

    A failure is not fatal (the receiver may be gone, or never existed):
    the first one is logged, the rest are silent.
    """
    global notify_failed
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return
    try:
        if addr[0] == "@":
            addr = "\0" + addr[1:]
        elif addr[0] != "/":
            raise OSError("not an absolute path or abstract name")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.settimeout(NOTIFY_TIMEOUT)
            s.connect(addr)
            s.sendall(state.encode())
    except OSError as e:
        if not notify_failed:
            notify_failed = True
            say(sys.stderr, "NOTIFY_SOCKET=%s: sending %s: %s (further failures are not logged)"
                % (os.environ["NOTIFY_SOCKET"], state.split("\n")[0], e))


def watchdog_period():
    """sd_watchdog_enabled(3): seconds between pings, or None when off.

    WATCHDOG_USEC is the deadline; pinging every third of it leaves room
    for two late pings. WATCHDOG_PID, if set, must be this process: a
    child that inherited the variables is not the one being watched.
    """
    usec = os.environ.get("WATCHDOG_USEC", "")
    if not (usec.isascii() and usec.isdigit()) or int(usec) == 0:
        return None
    pid = os.environ.get("WATCHDOG_PID")
    if pid is not None and pid != str(os.getpid()):
        return None
    if not os.environ.get("NOTIFY_SOCKET"):
        return None
    return int(usec) / 3e6


class Watchdog:
    """Sends WATCHDOG=1 from the serving loop itself, so a ping also proves
    that the loop is alive: a loop that hangs stops pinging and is killed."""

    def __init__(self, period):
        self.period = period
        self.due = time.monotonic()

    def ping(self):
        if self.period is None:
            return
        now = time.monotonic()
        if now >= self.due:
            notify("WATCHDOG=1")
            self.due = now + self.period

    def wait(self, limit):
        """How long the loop may block: at most limit, and not past the next
        ping (a period shorter than POLL must not be missed)."""
        if self.period is not None:
            limit = min(limit, self.due - time.monotonic())
        # A zero timeout would make the socket non-blocking (BlockingIOError).
        return max(limit, 0.001)


def pause(seconds, wd):
    """Sleeps for seconds, still pinging and noticing SIGTERM."""
    end = time.monotonic() + seconds
    while not stopping:
        wd.ping()
        left = end - time.monotonic()
        if left <= 0:
            return
        time.sleep(wd.wait(min(left, POLL)))


def serve(conn, wd, gen, body):
    """Reads one request head and answers it, within REQUEST_TIMEOUT."""
    deadline = time.monotonic() + REQUEST_TIMEOUT
    data = b""
    while b"\r\n\r\n" not in data and len(data) < 65536:
        wd.ping()  # a slow client is not a hung loop
        left = deadline - time.monotonic()
        if left <= 0:
            return
        conn.settimeout(wd.wait(min(left, POLL)))
        try:
            chunk = conn.recv(4096)
        except socket.timeout:
            continue
        if not chunk:
            break
        data += chunk
    conn.settimeout(max(deadline - time.monotonic(), 0.001))
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n"
                 b"X-Worker: %d:%s\r\nContent-Length: %d\r\n\r\n" % (os.getpid(), gen.encode(), len(body)) + body)


def on_term(signum, frame):
    global stopping
    stopping = True


def main():
    fds = listen_fds()
    if not fds:
        say(sys.stderr, "no LISTEN_FDS for this process; run it under mini-cluster")
        return 1
    try:
        ln = socket.socket(fileno=fds[0])
    except OSError as e:
        say(sys.stderr, "descriptor %d: %s" % (fds[0], e))
        return 1
    for fd in fds[1:]:
        # Only the first socket is served. LISTEN_FDS may count more
        # descriptors than were passed (a misconfigured activator): one that
        # is not open is logged and skipped, as systemd-aware programs do.
        try:
            os.close(fd)
        except OSError as e:
            say(sys.stderr, "descriptor %d: %s" % (fd, e))
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    worker = os.environ.get("HANDOFF_WORKER_ID", "-")
    gen = os.environ.get("HANDOFF_WORKER_GENERATION", "-")
    body = ("hello from python pid %d (worker %s, generation %s)\n" % (os.getpid(), worker, gen)).encode()
    notify("READY=1\nSTATUS=python worker serving")
    say(sys.stdout, "pid %d serving" % os.getpid())
    wd = Watchdog(watchdog_period())
    backoff = 0.0
    while not stopping:
        wd.ping()
        # The master hands sockets over in blocking mode, as systemd does;
        # a timeout lets the loop notice SIGTERM and ping without depending
        # on that.
        ln.settimeout(wd.wait(POLL))
        try:
            conn, _ = ln.accept()
        except socket.timeout:
            continue
        except OSError as e:
            # EMFILE leaves the connection queued, so retrying at once
            # would spin; ECONNABORTED and the network errors accept(2)
            # passes on are one connection's.
            backoff = min(max(2 * backoff, BACKOFF_MIN), BACKOFF_MAX)
            say(sys.stderr, "accept: %s; retrying in %g s" % (e, backoff))
            pause(backoff, wd)
            continue
        backoff = 0.0
        with conn:
            try:
                serve(conn, wd, gen, body)
            except OSError:
                pass
    notify("STOPPING=1")
    ln.close()  # close(2), not shutdown(2): siblings keep accepting
    return 0


if __name__ == "__main__":
    sys.exit(main())
