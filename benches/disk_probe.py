#!/usr/bin/env python3
"""Watches the disk under a timed start: reads 4 KiB at a random place of a file on it,
past the page cache, every 10 ms, until it is sent SIGTERM, and then prints what it saw.

    benches/disk_probe.py FILE READY_FILE SETTLE_S

FILE is any file on the disk to watch, of at least 4 KiB, written and flushed before (a read
of pages still waiting to be written would wait for them). First the probe waits until the
disk has settled: SETTLE_S seconds in a row with no read over 20 ms (for at most a minute;
past that it says so on stderr and goes on). Then it creates READY_FILE (start the clock
once it is there) and counts its reads afresh. On SIGTERM it prints one line,

    reads N over_20ms K longest_ms L settled_s S

and exits 0: the reads it made once ready, how many took over 20 ms, the longest (a read of
the disk the benchmarks run on takes well under a millisecond when nothing else waits on
it), and how long the disk took to settle. Exits 1 with a message, before creating
READY_FILE, if the file cannot be read past the page cache (O_DIRECT, which not every
filesystem takes) or is too small.

Why: a start reads its binaries, its cache dir and the S3 server's objects from this disk, so
when the disk stalls (on this benchmark machine, a VM's disk, reads have waited 0.2-0.5 s
behind a flush, and starts stalled by as much in the same moments, with either binary) a
start takes longer for a reason that is not the filesystem measured. The disk stalls most
right after heavy writes, such as the load and the TPC-B run before the first start, while
a machine that wakes after being idle has a quiet disk: so the probe lets the disk settle
before the clock starts, then says which starts it stalled under anyway. It sends no
request to the filesystem and reads about 400 KB/s of its own. Standard library only.
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
        if blocks == 0:
            sys.exit(f"disk_probe.py: {path} is smaller than {BLOCK} bytes")
        fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
        buf = mmap.mmap(-1, BLOCK)  # page-aligned, as O_DIRECT needs
        os.preadv(fd, [buf], 0)
    except OSError as e:
        sys.exit(f"disk_probe.py: cannot read {path} past the page cache: {e}")

    def probe():
        """One read at a random place; its time in ms."""
        offset = random.randrange(blocks) * BLOCK
        began = time.monotonic()
        os.preadv(fd, [buf], offset)
        return 1000 * (time.monotonic() - began)

    started = quiet_since = time.monotonic()
    while time.monotonic() - quiet_since < settle_s:
        if time.monotonic() - started > SETTLE_LIMIT_S:
            print(
                f"disk_probe.py: the disk did not settle within {SETTLE_LIMIT_S:g} s; going on",
                file=sys.stderr,
            )
            break
        if probe() > SLOW_MS:
            quiet_since = time.monotonic()
        time.sleep(EVERY_S)
    settled = time.monotonic() - started

    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
    reads, slow, longest = 0, 0, 0.0
    open(ready, "w").close()
    while not stop:
        ms = probe()
        reads += 1
        slow += ms > SLOW_MS
        longest = max(longest, ms)
        time.sleep(EVERY_S)
    print(f"reads {reads} over_20ms {slow} longest_ms {longest:.1f} settled_s {settled:.1f}")


if __name__ == "__main__":
    main()
