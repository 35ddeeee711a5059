"""Where a stage's overhead goes: `dvc repro -f -s STAGE` under strace, split at its processes' starts and ends.

benchmarks/study_profile.py finds ~23 s per stage between the study's `dvc repro` wall and the stages' own
walls (the notebooks' ``wall_seconds``). This script splits one stage's wall by the processes DVC starts
(strace follows only execve and process exits, through seccomp-bpf, so the traced run is not slowed):

- DVC before the command: DVC's start, reading dvc.yaml/dvc.lock/params.yaml, hashing the stage's deps,
  removing its outputs;
- the command before the kernel: `python -m varmix notebook` importing papermill, the preflight checks
  (varmix.pipeline.preflight), starting the kernel process;
- the kernel: its start, the notebook's imports, the cells; minus the stage's own ``wall_seconds`` (what the
  notebook times itself) this is the kernel's overhead;
- the command after the kernel: cleaning and writing the executed notebook;
- DVC after the command: hashing the outputs, copying them into its cache, rewriting dvc.lock.

Each stage is run ``--repeat`` times and the median of each phase is printed as a markdown table. A forced
re-run rewrites the stage's outputs (the same bytes, by the project's seeds) and its timings file and
dvc.lock (DVC's own formatting): the script restores results/ and dvc.lock from git afterwards, and
refuses to start while either has uncommitted changes.

    python benchmarks/stage_overhead.py report site            # the stages this checkout can run
    python benchmarks/stage_overhead.py report --repeat 3 --out benchmarks/results/stage-overhead-....md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PHASES = ("dvc before", "command before kernel", "kernel", "command after kernel", "dvc after")

_LINE = re.compile(r"^(?P<pid>\d+)\s+(?P<time>\d\d:\d\d:\d\d\.\d+)\s+(?P<rest>.*)$")


@dataclass(frozen=True)
class Event:
    pid: int
    seconds: float   # seconds since midnight (strace -tt)
    kind: str        # "exec" or "exit"
    argv: str        # the execve's argument list as strace prints it ("" for an exit)


def parse_trace(text: str) -> list[Event]:
    """strace -f -tt output (execve and exits) as events; failed execve calls (PATH lookups) are left out."""
    events = []
    for line in text.splitlines():
        m = _LINE.match(line)
        if not m:
            continue
        h, mi, s = m.group("time").split(":")
        t = int(h) * 3600 + int(mi) * 60 + float(s)
        rest = m.group("rest")
        if rest.startswith("execve(") and not re.search(r"= -1 ", rest):
            events.append(Event(int(m.group("pid")), t, "exec", rest))
        elif rest.startswith("+++ exited with") or rest.startswith("+++ killed by"):
            events.append(Event(int(m.group("pid")), t, "exit", ""))
    return events


def phases(events: list[Event], command: str) -> dict[str, float]:
    """The five phases' seconds from one traced run. ``command`` is a word of the stage's command line that
    only its process has ("notebook", "site")."""
    if not events:
        raise ValueError("empty trace: was strace allowed to run (ptrace)?")
    start, end = events[0].seconds, events[-1].seconds

    def first(pred):
        found = next((e for e in events if pred(e)), None)
        if found is None:
            raise ValueError("the trace lacks an expected process (the command or its kernel)")
        return found

    cmd = first(lambda e: e.kind == "exec" and "varmix" in e.argv and f'"{command}"' in e.argv)
    cmd_exit = first(lambda e: e.kind == "exit" and e.pid == cmd.pid)
    kernel = next((e for e in events if e.kind == "exec" and "ipykernel_launcher" in e.argv), None)
    if kernel is None:  # a command without a kernel (site): all of it is "command before kernel"
        k0 = k1 = cmd_exit.seconds
    else:
        k0 = kernel.seconds
        k1 = first(lambda e: e.kind == "exit" and e.pid == kernel.pid).seconds
    return {"dvc before": cmd.seconds - start, "command before kernel": k0 - cmd.seconds,
            "kernel": k1 - k0, "command after kernel": cmd_exit.seconds - k1,
            "dvc after": end - cmd_exit.seconds}


def trace_stage(stage: str, dvc: str) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "trace"
        # signal=SIGKILL, not none: none also hides "+++ killed by SIGKILL +++", the end of a kernel that
        # nbclient kills (varmix's runner shuts it down immediately; a graceful shutdown that times out)
        cmd = ["strace", "-f", "-tt", "-q", "--seccomp-bpf", "-e", "trace=execve", "-e", "signal=SIGKILL",
               "-s", "200", "-o", str(out), dvc, "repro", "-f", "-s", stage]
        run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        if run.returncode != 0:
            raise SystemExit(f"`dvc repro -f -s {stage}` failed ({run.returncode}):\n{run.stderr[-2000:]}")
        text = out.read_text()
    try:
        return phases(parse_trace(text), "site" if stage == "site" else "notebook")
    except ValueError as exc:
        kept = Path(tempfile.mkstemp(prefix=f"strace-{stage}-", suffix=".txt")[1])
        kept.write_text(text)
        raise SystemExit(f"{stage}: {exc}; the trace is in {kept}") from None


def own_walls() -> dict[str, float]:
    """Each stage's own wall time as its notebook recorded it (timings/*.json, study_profile's mapping)."""
    from study_profile import stage_walls

    from varmix.core import config

    params = config.load_params(ROOT / "params.yaml")
    return stage_walls(params, ROOT / "results" / params.dataset / params.profile / "timings")


def markdown(rows: dict[str, tuple[dict[str, float], float | None]], repeat: int, profile: str = "?") -> str:
    head = ["stage", *PHASES, "own wall", "kernel overhead", "total", "overhead"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for stage, (p, wall) in rows.items():
        total = sum(p.values())
        kernel_over = p["kernel"] - wall if wall is not None and p["kernel"] > 0 else None  # site: no kernel
        overhead = total - (wall or 0.0)
        cells = [stage, *(f"{p[k]:.2f}" for k in PHASES), "—" if wall is None else f"{wall:.2f}",
                 "—" if kernel_over is None else f"{kernel_over:.2f}", f"{total:.2f}", f"{overhead:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return (f"Seconds, median of {repeat} forced runs (`dvc repro -f -s STAGE` under strace) on the {profile} "
            f"profile, {cpu_name()}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, "
            f"{datetime.now():%Y-%m-%d}. Own wall: the stage's `wall_seconds` (timings/); kernel overhead: the "
            "kernel's time minus it; overhead: total minus own wall (site starts no kernel: its build, which it times "
            "itself, is part of its command).\n\n" + "\n".join(lines) + "\n")


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                flags = Path("/proc/cpuinfo").read_text()
                return line.split(":", 1)[1].strip() + (" (AVX-512)" if "avx512f" in flags else " (AVX2)")
    except OSError:
        pass
    return platform.machine()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("stages", nargs="+", help="dvc.yaml stages this checkout can re-run (report, site, ...)")
    parser.add_argument("--repeat", type=int, default=2, help="forced runs per stage (the median is shown)")
    parser.add_argument("--out", default=None, help="also write the table to this file")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error(f"--repeat {args.repeat} is invalid: expected an integer >= 1")
    if shutil.which("strace") is None:
        parser.error("strace is not installed (Debian: apt-get install strace)")
    dvc = shutil.which("dvc") or parser.error("dvc is not on PATH (make install)")
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "dvc.lock", "results"], cwd=ROOT,
                           capture_output=True, text=True).stdout
    if dirty:  # the forced runs' changes are undone from git afterwards: uncommitted work there would be lost
        parser.error(f"dvc.lock or results/ has uncommitted changes; commit or stash them first:\n{dirty}")
    rows = {}
    walls: dict[str, float] = {}
    try:
        for stage in args.stages:
            runs = [trace_stage(stage, dvc) for _ in range(args.repeat)]
            walls = own_walls()  # what the forced runs just recorded
            rows[stage] = ({k: statistics.median(r[k] for r in runs) for k in PHASES}, walls.get(stage))
    finally:
        subprocess.run(["git", "checkout", "--", "dvc.lock", "results"], cwd=ROOT, check=False)
    import yaml

    table = markdown(rows, args.repeat, yaml.safe_load((ROOT / "params.yaml").read_text())["profile"])
    print(table)
    if args.out:
        Path(args.out).write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
