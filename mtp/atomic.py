"""Atomic writes for the whole engine: a file through a temp file and one rename, a directory through
a staging directory and renames that a killed or failed save can always be recovered from.

A directory save (replaced_dir) goes: `.NAME.tmp-PID-*` (being written) -> `.NAME.new-PID` (complete)
-> the old NAME moves to `.NAME.old-PID` -> `.NAME.new-PID` becomes NAME -> the old copy is removed.
A kill between the last two renames leaves no NAME for a moment; recover() (run before every save
and load, and by checkpoint listings) then puts the complete copy back: `.new` when it exists, else
`.old`. Staging names start with "." so they are never taken for checkpoints or run directories.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger("mtp.atomic")
_LEFTOVER = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|new|old)-(?P<pid>\d+)(-.*)?$")
_saving: set[Path] = set()  # targets this process is saving right now: recover() leaves them alone
_saving_lock = threading.Lock()


@contextlib.contextmanager
def staged_file(path: str | Path) -> Iterator[Path]:
    """A temp file beside `path` for the block to write, renamed over `path` when the block ends (removed
    if it fails): an interruption leaves the old file whole."""
    path = Path(path)
    # Per process and thread: concurrent writers never share a staging file.
    staging = path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")
    try:
        yield staging
        os.replace(staging, path)
    except BaseException:
        staging.unlink(missing_ok=True)
        raise


def write_text(path: str | Path, text: str) -> None:
    """Write `text` to `path` atomically (staged_file)."""
    with staged_file(path) as staging:
        staging.write_text(text, encoding="utf-8")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _stale_leftovers(target: Path) -> dict[str, list[Path]]:
    """Staging dirs of saves of `target` that no running save owns, by kind (tmp, new, old)."""
    found: dict[str, list[Path]] = {"tmp": [], "new": [], "old": []}
    if not target.parent.is_dir():
        return found
    with _saving_lock:
        ours_active = target in _saving
    for path in target.parent.iterdir():
        match = _LEFTOVER.match(path.name)
        if not match or match["name"] != target.name:
            continue
        pid = int(match["pid"])
        if (pid == os.getpid() and not ours_active) or (pid != os.getpid() and not _alive(pid)):
            found[match["kind"]].append(path)
    return found


def recover(target: str | Path) -> None:
    """Finish what a killed (or failed) save of `target` left: when `target` is missing, the complete
    new copy (else the old one) becomes `target`; other leftover staging dirs are removed."""
    target = Path(target).absolute()
    leftovers = _stale_leftovers(target)
    if not target.exists():
        for kind in ("new", "old"):  # .new is complete (renamed so only once fully written), and newer
            if leftovers[kind]:
                chosen = max(leftovers[kind], key=lambda p: p.stat().st_mtime)
                os.replace(chosen, target)
                leftovers[kind].remove(chosen)
                log.warning("%s: restored the %s copy that an interrupted save left in %s", target, kind, chosen.name)
                break
    for path in leftovers["tmp"] + leftovers["new"] + leftovers["old"]:
        shutil.rmtree(path, ignore_errors=True)


def leftover_target(path: str | Path) -> Path | None:
    """The directory whose save left `path` (a `.NAME.tmp-*`, `.NAME.new-*` or `.NAME.old-*`), else None."""
    path = Path(path)
    match = _LEFTOVER.match(path.name)
    return None if match is None else path.with_name(match["name"])


def is_staging_name(name: str) -> bool:
    """A name replaced_dir or write_text uses for unfinished or superseded copies (hidden)."""
    return name.startswith(".")


@contextlib.contextmanager
def replaced_dir(target: str | Path, carry_over: bool = True) -> Iterator[Path]:
    """Yield an empty staging directory; when the block ends normally its content replaces `target`.

    carry_over: files and folders `target` already holds that the staging dir lacks are copied in
    (logs, eval results), hidden ones excepted. On an exception `target` is left as it was.
    """
    target = Path(target).absolute()
    target.parent.mkdir(parents=True, exist_ok=True)
    recover(target)
    pid = os.getpid()
    new, old = target.with_name(f".{target.name}.new-{pid}"), target.with_name(f".{target.name}.old-{pid}")
    with _saving_lock:
        _saving.add(target)
    # mkdir honours the umask (tempfile.mkdtemp would make every saved run directory 0700).
    staging = target.with_name(f".{target.name}.tmp-{pid}-{uuid.uuid4().hex[:12]}")
    staging.mkdir()
    try:
        yield staging
        if carry_over and target.is_dir():
            for item in target.iterdir():
                if not (staging / item.name).exists() and not is_staging_name(item.name):
                    (shutil.copytree if item.is_dir() else shutil.copy2)(item, staging / item.name)
        os.replace(staging, new)  # from here on the copy is complete
        if target.exists():
            os.replace(target, old)
        os.replace(new, target)
    except BaseException:
        if not target.exists() and old.exists():
            os.replace(old, target)
        for path in (staging, new):
            shutil.rmtree(path, ignore_errors=True)
        raise
    finally:
        with _saving_lock:
            _saving.discard(target)
    shutil.rmtree(old, ignore_errors=True)  # a failure here only leaves a hidden copy for recover()


def writable_problem(path: str | Path) -> str | None:
    """Why a file or directory cannot be created or written at `path`, or None. It probes the path (or
    its nearest existing folder) with a real temp file: os.access says yes to root on read-only mounts."""
    path = Path(path)
    probe_in = path if path.is_dir() else path.parent
    while not probe_in.exists():
        probe_in = probe_in.parent
    if not probe_in.is_dir():
        return f"{probe_in} is not a directory"
    if path.exists() and not path.is_dir() and not os.access(path, os.W_OK):
        return f"{path} is not writable"
    try:
        tempfile.TemporaryFile(dir=probe_in).close()
    except OSError as error:
        return f"cannot write in {probe_in} ({error.strerror or error})"
    return None
