"""The run folder's lock on a disk that is already full: one line, nothing half-written."""

import errno
import os

import pytest

from models.run_dir import RunLock
from transformer_setup.cli import UserError


def test_a_full_disk_when_the_run_starts_is_one_line(tmp_path, monkeypatch):
    def full(fd, data, offset):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "pwrite", full)
    with pytest.raises(UserError, match=r"cannot write .*\.lock \(No space left on device\)"):
        RunLock(tmp_path).acquire()
    monkeypatch.undo()
    lock = RunLock(tmp_path)  # the folder is not left locked
    assert lock.acquire() is None
    lock.release()
