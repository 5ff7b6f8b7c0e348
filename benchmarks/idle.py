"""Benchmark: an idle ``pivot-supervise watch``: its CPU use and resident memory.

Starts ``pivot-supervise watch --json`` on a one-stage temporary project, waits for the
first run and for the standby to be up, then samples the supervisor's CPU time over
``--seconds`` and reports its resident memory and that of each worker (the active
generation's and the standby's).  Linux only (``/proc``).

    python -m benchmarks.idle [--seconds 10] [--no-standby]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pivot_supervise.bench._common import machine, rss_mb

PIPELINE = """\
from pathlib import Path
from pivot_supervise import stage

@stage(outs=["out.txt"])
def trivial():
    Path("out.txt").write_text("ok")
"""


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat", "rb") as stat:
        fields = stat.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    found: list[int] = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as stat:
                    if int(stat.read().rsplit(b")", 1)[1].split()[1]) == pid:
                        found.append(int(entry))
            except OSError:
                continue
    return found


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--no-standby", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pivot-supervise-bench-idle-") as tmp:
        root = Path(tmp)
        (root / "pipeline.py").write_text(PIPELINE)
        command = [sys.executable, "-m", "pivot_supervise", "watch", "--json", "-j", "1"]
        if args.no_standby:
            command.append("--no-standby")
        process = subprocess.Popen(
            command, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        try:
            assert process.stdout is not None
            for line in process.stdout:
                if json.loads(line).get("event") == "run_finished":
                    break
            time.sleep(2.0)  # let the standby refill and everything settle
            before = cpu_seconds(process.pid)
            time.sleep(args.seconds)
            used = cpu_seconds(process.pid) - before
            workers = [p for p in children(process.pid) if "popen_loky" in cmdline(p)]
            result = {
                "machine": machine(),
                "standby": not args.no_standby,
                "seconds": args.seconds,
                "supervisor_cpu_percent": round(100 * used / args.seconds, 2),
                "supervisor_rss_mb": rss_mb(process.pid),
                "worker_rss_mb": [rss_mb(pid) for pid in workers],
            }
        finally:
            process.terminate()
            process.wait(timeout=30)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
