"""Secret and projected volumes written as the kubelet's atomic writer writes them, so that
what reads the files (the certificate reloader, the token file, the agent run from the chart)
sees every update the way it would in a pod."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path


def write_like_kubelet(directory: Path, files: Mapping[str, bytes]) -> None:
    """One version of the volume in the existing `directory`, first and at every update: the
    files in a new timestamped directory (`..<date_time>.<random>`), a `..data` symlink to
    it renamed over the old one at once, each name a symlink through `..data` (made once: a
    name left out of this version keeps its link, now dangling), so a reader never sees half
    an update. The previous versions are deleted only after the new one is written, so its
    files cannot reuse the inodes of the version they replace (which a reader may have
    loaded): that would hide the change from a reader that knows files by inode, mtime and
    size."""
    previous = [
        path
        for path in directory.iterdir()
        if path.name.startswith("..") and path.is_dir() and not path.is_symlink()
    ]
    stamp = time.strftime("..%Y_%m_%d_%H_%M_%S.")
    current = Path(tempfile.mkdtemp(prefix=stamp, dir=directory))
    current.chmod(0o755)
    for name, content in files.items():
        (current / name).write_bytes(content)
    staged = directory / "..data_tmp"
    staged.symlink_to(current.name)
    os.replace(staged, directory / "..data")  # the atomic swap
    for name in files:
        link = directory / name
        if not link.is_symlink():
            link.symlink_to(f"..data/{name}")
    for old in previous:
        shutil.rmtree(old)
