"""File helpers: files appear whole (written aside, then renamed) and with the mode the umask
gives."""
import contextlib
import io
import os
import tempfile
from typing import IO, Callable, Iterator


def _umask() -> int:
    mask = os.umask(0)  # the only way to read it; set straight back
    os.umask(mask)
    return mask


def follow_umask(path: str, directory: bool = False) -> None:
    """Give ``path`` the mode a plain ``open``/``mkdir`` would have given it (``tempfile``
    makes files 0600 and folders 0700, whatever the umask)."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "wb") -> Iterator[IO]:
    """``open(path, mode)`` for writing a whole file (``"wb"`` or ``"w"``, UTF-8), such that
    readers see the old or the new file, never a partial one: the file is written aside in the
    same folder, flushed and fsync'ed, then renamed over ``path``; an exception in the ``with``
    block leaves ``path`` as it was and no temporary behind."""
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_open writes whole files, mode 'wb' or 'w', not {mode!r}")
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp",
                               dir=folder)
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        follow_umask(tmp)  # colleagues may read checkpoints as they read any other file
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write(path: str, write: Callable[[io.BufferedWriter], None]) -> None:
    """Write ``path`` through ``write(file)`` (see :func:`atomic_open`)."""
    with atomic_open(path, "wb") as f:
        write(f)


def atomic_write_text(path: str, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))
