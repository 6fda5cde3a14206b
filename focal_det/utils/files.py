"""File helpers."""
import os


def _umask() -> int:
    mask = os.umask(0)  # the only way to read it; set straight back
    os.umask(mask)
    return mask


def follow_umask(path: str, directory: bool = False) -> None:
    """Give ``path`` the mode a plain ``open``/``mkdir`` would have given it (``tempfile``
    makes files 0600 and folders 0700, whatever the umask)."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())
