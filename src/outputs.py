"""
Where run.py writes, made safe before any work: each output path checked (a file name,
a folder that exists and takes a file, a device written in place), the params path held
against a second run, the temporary files a killed write left removed. Every problem is an
OutputError whose message run.py prints as its one line.
"""

import contextlib
import glob
import os
import tempfile

try:
    import fcntl
except ImportError:  # Windows: runs do not lock their params path
    fcntl = None


class OutputError(ValueError):
    """An output that cannot be written: str(e) is 'path: problem'."""


def same_file(a, b):
    """Whether two paths name one file: the same inode if both exist, else the same resolved path."""
    if os.path.exists(a) and os.path.exists(b):
        return os.path.samefile(a, b)
    return os.path.realpath(a) == os.path.realpath(b)


def check_writable(path, name):
    """Before any work: an output that cannot be written would fail only after training or decoding."""
    if os.path.basename(path) in ("", ".", ".."):  # "", "newdir/": a folder's name, existing or not
        raise OutputError(f"{path or repr(path)}: not a file name (--{name})")
    if os.path.isdir(path):
        raise OutputError(f"{path}: is a folder, not a file (--{name})")
    if os.path.exists(path) and not os.path.isfile(path):  # a device or a FIFO (/dev/null): written in place
        if not os.access(path, os.W_OK):
            raise OutputError(f"{path}: cannot write: Permission denied (--{name})")
        return
    # through a link, its target is replaced (beside the target); a checkpoint goes beside the link
    for folder in sorted({os.path.dirname(os.path.abspath(path)), os.path.dirname(os.path.realpath(path))}):
        if not os.path.isdir(folder):
            raise OutputError(f"{path}: folder {folder} does not exist (--{name})")
        problem = cannot_write_in(folder)
        if problem:
            raise OutputError(f"{path}: cannot write in folder {folder}: {problem} (--{name})")


def cannot_write_in(folder):
    """Why a file cannot be written in folder (read-only, full), or None."""
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".write_test.")
        try:
            os.write(fd, b"x")  # a full disk still makes an empty file
        finally:
            os.close(fd)
            os.remove(probe)
    except OSError as e:
        return e.strerror
    return None


def lock(path):
    """
    Hold <path>.lock for the run: a second run on the same params path stops at once, where both
    would train and the first would end with the second's params. flock, because the kernel lets
    go of it when its process dies: a killed run leaves the file, not the lock. None where there are
    no such locks (Windows, some network mounts): the run goes ahead unguarded.
    """
    if fcntl is None:
        return None
    lock_path = path + ".lock"
    while True:
        try:
            f = open(lock_path, "a")
        except OSError as e:
            raise OutputError(f"{lock_path}: cannot write: {e.strerror}") from None
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            raise OutputError(f"{path}: another run is writing these params (it holds {lock_path}): wait for it "
                              f"to end, or give this run another --writing_params_path") from None
        except OSError:
            f.close()
            return None
        # a run that just ended removed the file after we opened it: lock the file that is there now
        with contextlib.suppress(OSError):
            if os.path.samestat(os.fstat(f.fileno()), os.stat(lock_path)):
                return f
        f.close()


def unlock(f):
    """Remove the lock file while still holding it (a run that opened it meanwhile sees that), then let go."""
    if f is not None:
        with contextlib.suppress(OSError):
            os.remove(f.name)
        f.close()


def check_log_dir(logs):
    """TensorBoard writes in the current folder, wherever the params go: a read-only or full one, or an expt
    that is a file, must stop the run before its work, not after the corpus and the model."""
    folder = logs
    while not os.path.exists(folder):
        folder = os.path.dirname(folder) or "."
    if not os.path.isdir(folder):
        raise OutputError(f"{folder}: not a folder, but TensorBoard writes its logs in {logs}")
    problem = cannot_write_in(folder)
    if problem:
        raise OutputError(f"{os.path.abspath(folder)}: cannot write: {problem} (TensorBoard writes its logs in "
                          f"{logs} under the current folder)")


def remove_stale_temporaries(params_path):
    """
    The temporary files of writes that a killed run left (atomic_write's <name>.<random>.tmp,
    40 MB each for a checkpoint) beside params_path, its checkpoint and snapshots. Called
    once this run holds the path, so no other run is writing them.
    """
    stale = glob.glob(glob.escape(os.path.realpath(params_path)) + ".*.tmp")
    for path in stale:
        os.remove(path)
    return stale
