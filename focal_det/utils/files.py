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


def write_report(folder: str, stem: str, data, title: str, command: str, table: str) -> None:
    """``folder/stem.json`` (``data``) and ``folder/stem.md`` (a title, the command that
    regenerates it, a markdown table), as the analysis tools write them."""
    import json

    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, f"{stem}.json"), "w") as f:
        json.dump(data, f, indent=1)
    with open(os.path.join(folder, f"{stem}.md"), "w") as f:
        f.write(f"# {title}\n\nRegenerate: `{command}`\n\n{table}")
