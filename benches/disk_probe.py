#!/usr/bin/env python3
"""Watches the disk under a timed start: reads 4 KiB at a random place of a file on it,
past the page cache, every 10 ms, until it is sent SIGTERM, and then prints what it saw.

    benches/disk_probe.py FILE READY_FILE SETTLE_S

FILE is any file on the disk to watch, of at least 4 KiB, written and flushed before (a read
of pages still waiting to be written would wait for them). First the probe waits until the
disk has settled: SETTLE_S seconds in a row with no read over 20 ms (at most 60 s; past
that it goes on regardless). Then it creates READY_FILE (start the clock once it is there)
and reads on. On SIGTERM it prints, and exits 0,

    slow START MS          one line per read that took over 20 ms since READY_FILE: when it
                           began (seconds since the epoch, the clock of `date +%s.%N`) and
                           how long it took (a read of the disks the benchmarks run on takes
                           well under a millisecond when nothing else waits on them)
    reads N settled_s S    the reads made since READY_FILE, and how long the disk took to
                           settle (S is "no" if it had not within 60 s)

so that the caller counts the slow reads inside the interval it timed. Exits 1 with a
message, before creating READY_FILE, if FILE is missing, smaller than 4 KiB, or cannot be
read past the page cache (O_DIRECT, which not every filesystem takes).

Why: a start reads its binaries, its cache dir and the S3 server's objects from this disk, so
when the disk stalls (on the VM the benchmarks ran on, reads waited 0.2-0.5 s behind a
flush at times, and starts stalled by as much in the same moments, with either binary
measured) a start takes longer for a reason that is not the filesystem measured. A machine
that wakes after being idle has a quiet disk: so the probe lets the disk settle before the
clock starts (after the load and the TPC-B run it took a second or two), then says which
starts it was slow under anyway. It sends no request to the filesystem and reads about
400 KB/s of its own. Standard library only.
"""

import mmap
import os
import random
import signal
import sys
import time

BLOCK = 4096
EVERY_S = 0.01
SLOW_MS = 20.0
SETTLE_LIMIT_S = 60.0


def main():
    if len(sys.argv) != 4:
        sys.exit("usage: " + __doc__.strip().splitlines()[3].strip())
    path, ready, settle_s = sys.argv[1], sys.argv[2], float(sys.argv[3])
    try:
        blocks = os.path.getsize(path) // BLOCK
    except OSError as e:
        sys.exit(f"disk_probe.py: {e}")
    if blocks == 0:
        sys.exit(f"disk_probe.py: {path} is smaller than {BLOCK} bytes")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
        buf = mmap.mmap(-1, BLOCK)  # page-aligned, as O_DIRECT needs
        os.preadv(fd, [buf], 0)
    except OSError as e:
        sys.exit(f"disk_probe.py: cannot read {path} past the page cache (O_DIRECT): {e}")

    def probe():
        """One read at a random place: when it began (epoch seconds) and its time in ms."""
        offset = random.randrange(blocks) * BLOCK
        began, t = time.time(), time.monotonic()
        os.preadv(fd, [buf], offset)
        return began, 1000 * (time.monotonic() - t)

    started = quiet_since = time.monotonic()
    settled = "no"
    while time.monotonic() - started < SETTLE_LIMIT_S:
        if time.monotonic() - quiet_since >= settle_s:
            settled = f"{time.monotonic() - started:.1f}"
            break
        if probe()[1] > SLOW_MS:
            quiet_since = time.monotonic()
        time.sleep(EVERY_S)

    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
    reads, slow = 0, []
    open(ready, "w").close()
    while not stop:
        began, ms = probe()
        reads += 1
        if ms > SLOW_MS:
            slow.append((began, ms))
        time.sleep(EVERY_S)
    for began, ms in slow:
        print(f"slow {began:.6f} {ms:.1f}")
    print(f"reads {reads} settled_s {settled}")


if __name__ == "__main__":
    main()
