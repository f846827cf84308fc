#!/usr/bin/env python3
"""Answers one query as soon as a starting PostgreSQL will take it, as a client that keeps
trying would (Fly's proxy holding a connection while the Machine starts).

    benches/first_query.py SOCKET_DIR PORT USER DATABASE QUERY TIMEOUT_S READY_FILE

Creates READY_FILE once it is running (start it before the server, and the clock once the
file is there), then connects to the server's Unix socket every 5 ms until it accepts a
connection and is past its start ("the database system is starting up" is tried again),
runs QUERY and prints the first column of its first row and the time it came (seconds since
the epoch), on one line. Exits 1 with the server's message on any other error, or when
TIMEOUT_S passes. Standard library only: the frontend/backend protocol 3.0, with trust
authentication (the benchmarks' servers use no other).

Why not `pg_ctl -w` and psql: pg_ctl looks for the server's readiness every 100 ms, so a
start measured through it is rounded up to the next tenth of a second, and a client started
after the server costs a process start on a page cache the benchmark has dropped.
"""

import socket
import struct
import sys
import time

RETRY_S = 0.005
# SQLSTATE 57P03, cannot_connect_now: the server is starting (or recovering) and not yet
# accepting connections.
STARTING = "57P03"


class ServerError(Exception):
    def __init__(self, fields):
        self.code = fields.get("C", "")
        severity, message = fields.get("S", "ERROR"), fields.get("M", "?")
        super().__init__(f"{severity}: {message} (SQLSTATE {self.code})")


def read_exact(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("the server closed the connection")
        buf += chunk
    return buf


def messages(sock):
    while True:
        kind = read_exact(sock, 1)
        (length,) = struct.unpack("!I", read_exact(sock, 4))
        yield kind, read_exact(sock, length - 4)


def error_fields(body):
    fields = {}
    for part in body.split(b"\0"):
        if part:
            fields[chr(part[0])] = part[1:].decode("utf-8", "replace")
    return fields


def ask(path, user, database, query, deadline):
    """One connection: None if the server is not accepting yet, else the answer."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # A server stuck (in a filesystem call, say) must not hold the client past its deadline.
    sock.settimeout(max(0.01, deadline - time.monotonic()))
    try:
        try:
            sock.connect(path)
        except (FileNotFoundError, ConnectionRefusedError):
            return None
        params = b"user\0" + user.encode() + b"\0database\0" + database.encode() + b"\0\0"
        body = struct.pack("!I", 196608) + params
        sock.sendall(struct.pack("!I", len(body) + 4) + body)
        for kind, body in messages(sock):
            if kind == b"E":
                err = ServerError(error_fields(body))
                if err.code == STARTING:
                    return None
                raise err
            if kind == b"R" and struct.unpack("!I", body[:4])[0] != 0:
                raise ServerError({"M": "the server asks for a password; the benchmarks use trust"})
            if kind == b"Z":
                break
        q = query.encode() + b"\0"
        sock.sendall(b"Q" + struct.pack("!I", len(q) + 4) + q)
        answer = None
        for kind, body in messages(sock):
            if kind == b"E":
                raise ServerError(error_fields(body))
            if kind == b"D" and answer is None:
                (columns,) = struct.unpack("!H", body[:2])
                (size,) = struct.unpack("!i", body[2:6])
                answer = "" if columns == 0 or size < 0 else body[6 : 6 + size].decode()
            if kind == b"Z":
                return "" if answer is None else answer
    except ConnectionError:
        # The server went away between accepting and answering (a start that failed and
        # restarted): try again until the deadline, as a client would.
        return None
    finally:
        sock.close()


def main():
    if len(sys.argv) != 8:
        sys.exit("usage: " + __doc__.strip().splitlines()[3].strip())
    sock_dir, port, user, database, query, timeout, ready = sys.argv[1:8]
    timeout = float(timeout)
    path = f"{sock_dir}/.s.PGSQL.{port}"
    deadline = time.monotonic() + timeout
    open(ready, "w").close()
    while True:
        try:
            answer = ask(path, user, database, query, deadline)
        except ServerError as e:
            sys.exit(f"first_query.py: {e}")
        except (TimeoutError, socket.timeout):
            sys.exit(f"first_query.py: {path} did not answer within {timeout:g} s")
        if answer is not None:
            print(f"{answer} {time.time():.6f}")
            return
        if time.monotonic() > deadline:
            sys.exit(f"first_query.py: {path} took no query within {timeout:g} s")
        time.sleep(RETRY_S)


if __name__ == "__main__":
    main()
