"""The errors a user can cause, and how the command line reports them.

Library code raises ``UserError`` (or a subclass, e.g. ``varmix.learn.data.DataError``) for something the user
can fix, with a message that says what is wrong, which file or key, and what to do. ``python -m varmix``
catches these in one place (``varmix.pipeline.cli.main``, through ``describe``) and prints ``error: <message>``
instead of a traceback. ``ValueError`` (``errors.ConfigError`` is one), ``FileNotFoundError`` and
``PermissionError`` are reported the same way: the library raises them on bad input with a clear message.
"""

from __future__ import annotations

import errno
import signal


class UserError(Exception):
    """Something the user can fix; the message says what, where, and what to do."""

    exit_code = 2


class ConfigError(ValueError):
    """A params.yaml value is missing, unknown or out of range."""


class TrainingDiverged(UserError, RuntimeError):
    """Training blew up with finite numbers (a loss far above its start, accuracy at chance): a setting,
    usually the learning rate, is too large. Raised by varmix.learn.train and varmix.learn.vae; the message names the
    run, the epoch, the loss, the lr and the params.yaml key to lower."""


class VAEBelowGate(UserError, RuntimeError):
    """The trained VAE misses a quality gate (vae.min_psnr, vae.min_recon_accuracy): VarMixup would train
    on decodes too far from the data. Raised by varmix.learn.gate.check_gate; the message names the measured
    value, the threshold, the params.yaml key and what to change."""


class NotebookFailed(UserError):
    """A notebook run by ``python -m varmix notebook`` stopped: a cell raised (``ename``/``evalue`` are the
    exception's type and message) or the kernel died. ``failed`` is the executed notebook with the full
    traceback, or None when none was written."""

    exit_code = 1

    def __init__(self, notebook: str, ename: str, evalue: str, failed=None):
        self.notebook, self.ename, self.evalue, self.failed = notebook, ename, evalue, failed
        super().__init__(f"error in notebook {notebook}: {ename}: {' '.join(str(evalue).split())}")


class Refused(UserError):
    """A failure reported in several lines (``lines``: what failed, then what was done about it), e.g. a check
    before a DVC stage's work, after which the outputs DVC had removed were put back
    (``varmix.pipeline.preflight``)."""

    def __init__(self, lines: list[str], exit_code: int = 2):
        self.lines, self.exit_code = list(lines), exit_code
        super().__init__(" ".join(self.lines))


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGINT stopped a notebook run. A KeyboardInterrupt, so that no ``except Exception`` on
    the way swallows it and asyncio (papermill's kernel client) re-raises it at once, as it does Ctrl-C."""

    def __init__(self, signum: int, notebook: str):
        self.signum, self.notebook = signum, notebook
        super().__init__(f"interrupted: notebook {notebook} stopped ({signal.Signals(signum).name}), nothing written")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # the shell's convention for a process ended by a signal


# What the command line reports as one line (no traceback). ConfigError is a ValueError. OSError: what the
# system refused (a full disk, a read-only mount, too many open files), reported by errno below.
REPORTED = (UserError, ValueError, OSError)

# What to do about each system error a run can meet while it writes; every write is atomic, so what failed
# left nothing half-written and the committed files as they were.
_OS_FIX = {
    errno.ENOSPC: "free space on that disk (df -h shows it) and run again",
    errno.EDQUOT: "free space within your disk quota and run again",
    errno.EROFS: "the file system is read-only: remount it writable, or run where you can write",
    errno.EACCES: "make its folder writable by you, and run again",
    errno.EPERM: "make its folder writable by you, and run again",
    errno.EMFILE: "too many open files in this process: raise the limit (ulimit -n 4096) and run again",
    errno.ENFILE: "too many open files on this system: close some programs and run again",
    errno.EIO: "the disk reported an I/O error: check it (dmesg) before you run again",
}


def describe(exc: BaseException) -> tuple[list[str], int] | None:
    """The lines to print and the exit code for an error the user can fix, or None when ``exc`` is not one
    of ``REPORTED`` or ``Interrupted`` (a bug: its traceback should show)."""
    if isinstance(exc, Interrupted):
        return [str(exc)], exc.exit_code
    if isinstance(exc, Refused):
        return exc.lines, exc.exit_code
    if isinstance(exc, NotebookFailed):
        return [str(exc)] + ([f"full traceback: {exc.failed}"] if exc.failed else []), exc.exit_code
    if isinstance(exc, PermissionError) and exc.filename:
        return [f"error: permission denied writing {exc.filename}: make its folder writable, or set "
                f"VARMIX_WORKDIR to write runs/ and results/ elsewhere"], 2
    if isinstance(exc, OSError) and exc.errno in _OS_FIX and not isinstance(exc, FileNotFoundError):
        where = f" writing {exc.filename}" if exc.filename else ""
        return [f"error: {exc.strerror or errno.errorcode[exc.errno]}{where}: {_OS_FIX[exc.errno]} "
                f"(nothing half-written was kept)"], 2
    if isinstance(exc, REPORTED):
        return [f"error: {exc}"], getattr(exc, "exit_code", 2)
    return None
