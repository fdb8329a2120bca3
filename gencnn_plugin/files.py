"""Writing a user's files: only what they named, atomically, with the mode they expect.

Every file gencnn writes (checkpoints, resume states, grids, .npz, ONNX) goes through :func:`atomic_path`: a hidden
temporary file beside the target, fsync, then ``os.replace``, so a crash leaves the previous file intact. The target
must be a regular file path (never a device, a folder or an empty string); a replaced file keeps its permission
bits, a new one gets the umask's; a symlink is followed, so its target is what changes. Temporary files of ours that
a killed process left behind (``.NAME.PID.XXXX.tmp`` whose PID is gone) are removed on the next write to NAME.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["OutputPathError", "check_output_path", "atomic_path", "new_file_mode"]


class OutputPathError(ValueError):
    """An output path that names something other than a regular file we may create or replace."""


def new_file_mode() -> int:
    """The mode ``open(path, "w")`` would give a new file: 0o666 minus the umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def check_output_path(path: str | Path, follow_symlinks: bool = True) -> Path:
    """``path`` resolved through symlinks, if it may be written: a regular file or nothing yet, in a folder that is
    not a file. Raises :class:`OutputPathError` naming what is there instead.

    ``follow_symlinks=False`` is for files the user did not name (a run folder's own files, a default output name):
    a link there is refused rather than written through.
    """
    text = str(path)
    if not text.strip():
        raise OutputPathError("the output path is empty: give a file name")
    p = Path(text)  # taken literally: a shell has already expanded ~ (an unknown ~user would be an error here)
    if p.is_symlink():
        if not follow_symlinks:
            raise OutputPathError(f"{text} is a symbolic link; gencnn does not write through links it was not given")
        try:
            p = p.resolve(strict=True)
        except (OSError, RuntimeError):  # a dangling link or a loop
            raise OutputPathError(f"{text} is a symbolic link that leads nowhere (or in a loop)") from None
    if p.exists() and not p.is_file():
        kind = ("a folder" if p.is_dir() else "a device" if p.is_char_device() or p.is_block_device()
                else "not a regular file")
        raise OutputPathError(f"{text} is {kind}; give a file path to write")
    if text.endswith(os.sep):
        raise OutputPathError(f"{text} names a folder; give a file path to write")
    parent = p.parent
    for anc in (parent, *parent.parents):
        if anc.exists():
            if not anc.is_dir():
                raise OutputPathError(f"{text}: {anc} is a file, not a folder")
            break
    return p


_TMP = re.compile(r"\.(?P<name>.+)\.(?P<pid>\d+)\.[^.]+\.tmp$")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_temporaries(target: Path) -> None:
    """Remove ``.NAME.PID.*.tmp`` files beside ``target`` whose writer process no longer exists."""
    with contextlib.suppress(OSError):
        for cand in target.parent.glob(f".{target.name}.*.tmp"):
            m = _TMP.fullmatch(cand.name)
            if m and m.group("name") == target.name and int(m.group("pid")) != os.getpid() \
                    and not _pid_alive(int(m.group("pid"))):
                cand.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(path: str | Path, follow_symlinks: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically (keeping the old file's
    mode, or the umask's for a new file), on failure it is removed. ``follow_symlinks``: see check_output_path."""
    target = check_output_path(path, follow_symlinks)
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(target)
    mode = stat.S_IMODE(target.stat().st_mode) if target.exists() else new_file_mode()
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.{os.getpid()}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
