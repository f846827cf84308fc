#!/usr/bin/env python3
"""Where a `--durability remote` commit's time goes, from a mount's log.

    benches/commit_times.py LOG...

LOG is a bucketfs mount log kept by `KEEP_LOGS=DIR benches/peers.sh` (DIR/bucketfs-remote-fs.log).
Each "checkpoint committed" line gives the checkpoint's timings (commit 728a2e7 on); this
prints, over the middle half of them (the steady part of a pgbench run), per log:

  checkpoints/s   how many committed per second
  gap             from one checkpoint's end to the next one's start (median, ms): PostgreSQL
                  hearing its fsync returned, writing the next commit's WAL, and that fsync
                  reaching bucketfs and asking for a checkpoint
  back to back    the share of gaps under 0.2 ms: checkpoints asked for while the one
                  before was still in flight
  besides PUT     the checkpoint's time until its waiters are released, less the PUT (median,
                  ms, bases left out): the cut, packing, the delta, the log sync, applying
                  the manifest to the view
  log sync        of which the sync of the cache dir's log (median, ms)
  PUT             the manifest's PUT (median, ms, bases left out)
  bases           the share of checkpoints that wrote a base, and their median time to commit
"""

import re
import statistics
import sys
from datetime import datetime


def checkpoints(path):
    rows = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if "checkpoint committed" not in line or "flushed_us=" not in line:
                continue
            fields = dict(re.findall(r"(\w+)=(\S+)", line))
            at = datetime.fromisoformat(line.split()[0].replace("Z", "+00:00")).timestamp()
            rows.append((at, fields))
    return rows


def report(path):
    rows = checkpoints(path)
    if len(rows) < 8:
        return f"{path}: only {len(rows)} checkpoint lines with timings (a log of 728a2e7 or later?)"
    mid = rows[len(rows) // 4 : 3 * len(rows) // 4]
    span = mid[-1][0] - mid[0][0]
    ms = lambda us: int(us) / 1000
    # A line is written at the checkpoint's end; it started flushed_us before that (the rest,
    # marking clean and the record, is well under a millisecond).
    gaps = [(t2 - ms(d2["flushed_us"]) / 1000 - t1) * 1000 for (t1, _), (t2, d2) in zip(mid, mid[1:])]
    deltas = [d for _, d in mid if d["base"] == "false"]
    bases = [d for _, d in mid if d["base"] == "true"]
    med = statistics.median
    base_ms = f"{med(ms(d['committed_us']) for d in bases):.1f} ms" if bases else "-"
    return (
        f"{path}\n"
        f"  checkpoints/s {len(mid) / span:.0f}\n"
        f"  gap           {med(gaps):.2f} ms\n"
        f"  back to back  {100 * sum(g < 0.2 for g in gaps) / len(gaps):.0f}%\n"
        f"  besides PUT   {med(ms(d['committed_us']) - ms(d['commit_us']) for d in deltas):.2f} ms\n"
        f"  log sync      {med(ms(d['log_sync_us']) for d in deltas):.2f} ms\n"
        f"  log synced    {100 * sum(int(d['log_sync_us']) >= 30 for d in deltas) / len(deltas):.1f}%\n"
        f"  PUT           {med(ms(d['commit_us']) for d in deltas):.2f} ms\n"
        f"  bases         {100 * len(bases) / len(mid):.1f}%, {base_ms} each"
    )


if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help"):
        print(__doc__.strip())
        sys.exit(0 if len(sys.argv) > 1 else 2)
    for p in sys.argv[1:]:
        print(report(p))
