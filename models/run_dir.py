"""A run's output folder: owned by one run at a time, checked for room before training starts.

The lock is OUT_DIR/.lock, held with `fcntl.flock` for the life of the run: the kernel releases
it when the process ends in any way (SIGKILL included), so a lock left by a dead run is free and
is taken over with a warning, while a live run's lock stops a second run at once. The file's text
names the holder (pid, host, start time) for the message.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import socket
import time
from pathlib import Path

from transformer_setup.cli import UserError

PROBE_BYTES = 4096


class RunLock:
    def __init__(self, out_dir: Path) -> None:
        self.path = out_dir / ".lock"
        self.fd: int | None = None

    def acquire(self) -> str | None:
        """Take the lock; a UserError if a live run holds it, or if the folder cannot take the
        lock file (a full disk, no permission). Returns a warning when taking over from a run
        that ended without releasing it."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise UserError(f"cannot write {self.path} ({err.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip()
            os.close(fd)
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise UserError(f"cannot lock {self.path} ({err.strerror})") from None
            raise UserError(f"{self.path.parent} is in use by another run "
                            f"({describe(holder)}); wait for it to end, stop it, or choose "
                            "another --out_dir") from None
        previous = os.pread(fd, 4096, 0).decode(errors="replace").strip()
        me = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                         "started": time.strftime("%Y-%m-%d %H:%M:%S")})
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, me.encode(), 0)
        except OSError as err:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
            raise UserError(f"cannot write {self.path} ({err.strerror}); free some space or "
                            "choose another --out_dir") from None
        self.fd = fd
        if previous:
            return f"warning: taking over {self.path} from a run that ended without " \
                   f"releasing it ({describe(previous)})"
        return None

    def release(self) -> None:
        if self.fd is not None:
            os.ftruncate(self.fd, 0)  # an empty lock file: the last run ended cleanly
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


def describe(holder: str) -> str:
    try:
        info = json.loads(holder)
        return f"pid {info['pid']} on {info['host']}, started {info['started']}"
    except (ValueError, KeyError, TypeError):
        return holder or "holder unknown"


def gigabytes(n_bytes: float) -> str:
    return f"{n_bytes / 1e9:.2f} GB"


def check_room(out_dir: Path, checkpoint_bytes: int, numbered: int = 0,
               written: int = 0) -> str | None:
    """Fail before training, not after an hour: the folder must take a real write, and hold
    latest.pt and the `numbered` copies --keep_checkpoints keeps, at the estimated size (less
    the `written` bytes of those already there, which the run replaces). Returns a warning when
    it cannot also hold what a run writes at once (a new latest.pt beside the old, and
    best_model.pt)."""
    probe = out_dir / f".write-test-{os.getpid()}"
    try:
        with open(probe, "wb") as f:
            f.write(b"\0" * PROBE_BYTES)
            f.flush()
            os.fsync(f.fileno())
    except OSError as err:
        raise UserError(f"output folder {out_dir} is not writable ({err.strerror})") from None
    finally:
        probe.unlink(missing_ok=True)
    free = shutil.disk_usage(out_dir).free
    needed = max(0, (1 + numbered) * checkpoint_bytes - written)
    what = "one checkpoint needs" if not numbered else \
        f"latest.pt and {numbered} numbered copies (--keep_checkpoints) need"
    if free < needed:
        raise UserError(f"{out_dir} has {gigabytes(free)} free, but {what} about "
                        f"{gigabytes(needed)}; free some space or choose another --out_dir")
    if free < needed + 0.5 * checkpoint_bytes:  # a new latest.pt and best_model.pt beside
        return (f"warning: {out_dir} has {gigabytes(free)} free; writing latest.pt and "
                f"best_model.pt needs up to {gigabytes(needed + 0.5 * checkpoint_bytes)}")
    return None


def written_checkpoints(out_dir: Path) -> int:
    """Bytes of the checkpoints a resumed run will replace or rotate: latest.pt, ckpt_*.pt."""
    return sum(p.stat().st_size for p in [out_dir / "latest.pt", *out_dir.glob("ckpt_*.pt")]
               if p.is_file())


def checkpoint_bytes(n_params: int) -> int:
    """latest.pt: fp32 weights and AdamW's two fp32 moments, plus a little for the rest."""
    return 12 * n_params + (1 << 20)
