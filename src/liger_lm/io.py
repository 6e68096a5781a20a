"""Outputs: one rule for existing outputs, one writer per output, and atomic writes.

The rule every command that writes follows (docs/reliability.md, "Existing outputs"):
1. `--out` is checked before the slow work: a path through a file, or a folder that cannot be written, is refused.
2. An existing output is refused unless `--overwrite` (`train` also takes `--resume`; `run` reuses a run folder of
   the same settings).
3. `--overwrite` builds the new output beside the old one and puts it in place only once it is complete, so a
   failure at any point leaves the old output as it was.
4. One process at a time writes an output (`output_lock`); a second one is refused with one line.
Files and folders are written under a temporary name in the same folder, then renamed into place.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

from .errors import DataError, OutputError, OutputExistsError

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; outputs are then not protected against a second writer
    fcntl = None

OVERWRITE_HINT = "choose another --out or pass --overwrite"


@contextmanager
def claim_output(
    target: str | Path, overwrite: bool = False, *, is_file: bool = False, outputs: Iterable[Path] | None = None
) -> Iterator[Path]:
    """Apply the rule above to `target` (a folder, or a file with `is_file`) and hold its lock inside the block.

    `outputs`: the paths whose existence counts as an existing output (default: `target` itself; `bench` writes
    two files into a folder that may hold other results).
    """
    target = Path(target)
    check_writable(target, is_file=is_file)
    with output_lock(target):
        existing = [path for path in (outputs or [target]) if path.exists()]
        if existing and not overwrite:
            raise OutputExistsError(f"{existing[0]} already exists; {OVERWRITE_HINT}")
        yield target


def check_writable(target: str | Path, is_file: bool = False) -> None:
    """Refuse `target` before any slow work if it cannot be written: a path through a file, a folder given for a
    file (or the reverse), or a nearest existing folder where nothing can be created."""
    target = Path(target)
    if target.exists() and target.is_dir() == is_file:
        kind = "a folder, not a file" if is_file else "a file, not a folder"
        raise OutputError(f"cannot write {target}: it is {kind}; choose another --out")
    folder = target.absolute().parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        raise OutputError(f"cannot write {target}: {folder} is a file, not a folder; choose another --out")
    try:  # permissions alone do not tell (root, read-only file systems): try to create a file there
        handle, probe = tempfile.mkstemp(prefix=".liger-write-test-", dir=folder)
    except OSError as err:
        raise OutputError(f"cannot write {target}: {folder} is not writable ({err.strerror}); "
                          "choose another --out or fix its permissions") from None
    os.close(handle)
    os.unlink(probe)


@contextmanager
def output_lock(target: str | Path) -> Iterator[None]:
    """Hold `.NAME.lock` beside `target` inside the block: a second process writing the same output is refused at once.

    The lock is an advisory `flock`, which the operating system releases when the process ends, killed or not, so a
    crashed run never leaves a stale lock behind.
    """
    target = Path(target)
    if fcntl is None:
        yield
        return
    lock = target.with_name(f".{target.name}.lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    handle = _acquire(lock, target)
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)  # while still held: a process that opened it meanwhile sees it is gone (_acquire)
        os.close(handle)


def _acquire(lock: Path, target: Path) -> int:
    while True:
        handle = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(handle, 32, 0).decode(errors="replace").strip()
            os.close(handle)
            raise OutputError(f"{target} is being written by another liger process (pid {holder or '?'}, lock file "
                              f"{lock}); wait for it to finish, or choose another --out") from None
        try:
            current = os.stat(lock).st_ino
        except FileNotFoundError:
            current = None
        if current == os.fstat(handle).st_ino:
            os.ftruncate(handle, 0)
            os.write(handle, str(os.getpid()).encode())
            return handle
        os.close(handle)  # the holder removed the file just before we locked it: lock the new one


def staging_folder(target: str | Path) -> Path:
    """Where an `--overwrite` run builds the new `target` until it is complete (`replace_folder`); beside it, so that
    the final rename stays on one file system."""
    target = Path(target)
    return target.with_name(f".{target.name}.new")


def replace_folder(new: Path, target: Path) -> None:
    """Put the complete folder `new` in place of `target`: two renames (old → backup, new → target), then the backup
    is removed. A kill between the renames leaves the old output as `.NAME.old-PID` beside the target."""
    if not target.exists():
        new.rename(target)
        return
    backup = target.with_name(f".{target.name}.old-{os.getpid()}")
    target.rename(backup)
    new.rename(target)
    remove(backup)


def remove(path: Path) -> None:
    """Delete a file or a folder tree."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


@contextmanager
def atomic_directory(target: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside `target`; on success it replaces `target`, on error it is removed."""
    target = Path(target)
    if target.exists() and not overwrite:
        raise OutputExistsError(f"{target} already exists; {OVERWRITE_HINT}")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = _staging_path(target)
    staging.mkdir()  # the user's umask applies, as to any folder (mkdtemp's 0700 would hide it from their group)
    try:
        yield staging
        replace_folder(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging)


def read_utf8(path: str | Path) -> str:
    """The text of an input file; one that is not UTF-8 is refused naming the line of its first undecodable byte."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise DataError(f"{path} line {line} is not UTF-8 text (byte 0x{data[err.start]:02x}); save the file as "
                        "UTF-8") from None


@contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path` (same suffix, for writers that go by it) to write the file to; on success
    it is renamed onto `path`, on error removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = _staging_path(path, path.suffix)
    os.close(os.open(staging, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))  # umask applies, as for open()
    try:
        yield Path(staging)
        os.replace(staging, path)
    finally:
        Path(staging).unlink(missing_ok=True)


def _staging_path(target: Path, suffix: str = "") -> Path:
    """A fresh name beside `target` for the output under construction: `.NAME.tmp-<random><suffix>`."""
    return target.parent / f".{target.name}.tmp-{secrets.token_hex(6)}{suffix}"


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write `text` to `path` through a temporary file (flushed to disk) and an atomic rename."""
    with atomic_file(path) as staging, open(staging, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def write_json_atomic(path: str | Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")
