#!/usr/bin/env python3
"""What GC passes and compactions hold up the commits, from a mount's log.

    benches/commit_gaps.py [--from S] [--to S] [--over MS] LOG...

LOG is a bucketfs mount log kept by `KEEP_LOGS=DIR benches/peers.sh`
(DIR/bucketfs-remote-fs.log).
Under `--durability remote` a checkpoint commits at almost every fsync, so a long gap between
two "checkpoint committed" lines is a stretch in which no commit returned. This prints, per log,
of the gaps that end between --from (12) and --to (95) seconds after the log's first line (the
mount's start: pgbench -i runs before the window, and its timed run ends after it, when commits
stop for want of work, not because something held them):

  gaps            all of them: how many, median, max (ms)
  compactions     how many "compaction committed" lines fall inside those gaps
  with one        the gaps with a compaction's line inside them: min, median, max (ms)
  elapsed         those compaction lines' elapsed_ms: min-max
  written         their written_bytes, in MB: min-max
  changed         their pages_changed_meanwhile (pages that commits beside the compaction
                  rewrote or removed, left out of its manifest): min-max, where logged
  long gaps       every gap over --over ms (150), as "ms at s"
"""

import argparse
import re
import statistics
from datetime import datetime


def events(path):
    """(seconds since the log's first line, kind, fields) for each line of interest."""
    out, start = [], None
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                at = datetime.fromisoformat(line.split()[0].replace("Z", "+00:00")).timestamp()
            except (ValueError, IndexError):
                continue
            if start is None:
                start = at
            for kind in ("checkpoint committed", "compaction committed"):
                if kind in line:
                    out.append((at - start, kind, dict(re.findall(r"(\w+)=(\S+)", line))))
    return out


def span(values):
    return f"{min(values)}-{max(values)}" if values else "-"


def report(path, lo, hi, over):
    rows = events(path)
    commits = [t for t, kind, _ in rows if kind == "checkpoint committed"]
    compactions = [(t, f) for t, kind, f in rows if kind == "compaction committed"]
    gaps = [(a, b) for a, b in zip(commits, commits[1:]) if lo <= b <= hi]
    compactions = [(t, f) for t, f in compactions if any(a < t < b for a, b in gaps)]
    with_one = sorted((b - a) * 1000 for a, b in gaps if any(a < t < b for t, _ in compactions))
    long_gaps = [f"{round((b - a) * 1000)} at {b:.1f}" for a, b in gaps if (b - a) * 1000 > over]
    ms = sorted((b - a) * 1000 for a, b in gaps)
    all_gaps = f"{statistics.median(ms):.1f}, {ms[-1]:.1f} ms" if ms else "-"
    ints = lambda key: [int(f[key]) for _, f in compactions if key in f]
    shown = (
        ", ".join(
            str(round(g)) for g in (with_one[0], statistics.median(with_one), with_one[-1])
        )
        if with_one
        else "-"
    )
    return (
        f"{path}\n"
        f"  gaps         {len(gaps)}, {all_gaps}\n"
        f"  compactions  {len(compactions)}\n"
        f"  with one     {shown} ms\n"
        f"  elapsed      {span(ints('elapsed_ms'))} ms\n"
        f"  written      {span([round(b / 1e6, 1) for b in ints('written_bytes')])} MB\n"
        f"  changed      {span(ints('pages_changed_meanwhile'))} pages\n"
        f"  long gaps    {', '.join(long_gaps) or 'none'}"
    )


if __name__ == "__main__":
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument("--from", dest="lo", type=float, default=12)
    p.add_argument("--to", dest="hi", type=float, default=95)
    p.add_argument("--over", type=float, default=150)
    p.add_argument("logs", nargs="+")
    a = p.parse_args()
    for log in a.logs:
        print(report(log, a.lo, a.hi, a.over))
