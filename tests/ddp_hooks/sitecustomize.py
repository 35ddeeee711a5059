"""Loaded by every Python process of a tests/test_distributed.py run (its PYTHONPATH starts here): the
launcher, torchrun's agent and each worker. With VARMIX_TEST_WATCH set it records, through an audit hook
(sys.addaudithook), every write under that folder (a file opened for writing, a rename, a removal, a new
folder) as "<RANK> <event> <path>" lines in VARMIX_TEST_LOG (RANK is torchrun's; "launcher" outside
torchrun). With VARMIX_TEST_KILL_AFTER=N, the process that renames epoch N's checkpoint.pt
into place kills the launcher's process group (the launcher and torchrun: VARMIX_TEST_PGID, which the
launcher sets for its children) and itself with SIGKILL at its next rename, i.e. right after that
checkpoint was complete: a run killed between epochs (torchrun's other workers, in sessions of their own,
stop at their next collective once rank 0 is gone)."""

import os
import signal
import sys

WATCH = os.environ.get("VARMIX_TEST_WATCH")

if WATCH:
    _watch = os.path.realpath(WATCH)
    _log = os.environ["VARMIX_TEST_LOG"]
    _kill_after = int(os.environ.get("VARMIX_TEST_KILL_AFTER") or 0)
    _rank = os.environ.get("RANK", "launcher")
    os.environ.setdefault("VARMIX_TEST_PGID", str(os.getpgrp()))
    _state = {"busy": False, "checkpoints": 0}
    _WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

    def _under(path) -> str | None:
        try:
            p = os.path.realpath(os.fsdecode(os.fspath(path)))
        except TypeError:  # a file descriptor
            return None
        return p if p == _watch or p.startswith(_watch + os.sep) else None

    def _writes(event: str, args: tuple):
        if event == "open":
            path, mode, flags = args
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags & _WRITE_FLAGS)
            return [path] if writing else []
        if event == "os.rename":
            return [args[1]]
        if event in ("os.remove", "os.rmdir", "os.mkdir", "shutil.rmtree"):
            return [args[0]]
        return []

    def _hook(event: str, args: tuple) -> None:
        if _state["busy"] or event not in ("open", "os.rename", "os.remove", "os.rmdir", "os.mkdir", "shutil.rmtree"):
            return
        _state["busy"] = True
        try:
            hits = [p for p in (_under(a) for a in _writes(event, args)) if p]
            if not hits:
                return
            if _kill_after and event == "os.rename":
                if _state["checkpoints"] == _kill_after:
                    os.killpg(int(os.environ["VARMIX_TEST_PGID"]), signal.SIGKILL)
                    os.kill(os.getpid(), signal.SIGKILL)
                if os.path.basename(hits[0]) == "checkpoint.pt":
                    _state["checkpoints"] += 1
            with open(_log, "a") as f:
                f.write(f"{_rank} {event} {hits[0]}\n")
        finally:
            _state["busy"] = False

    sys.addaudithook(_hook)
