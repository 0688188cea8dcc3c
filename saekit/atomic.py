"""
Writing files so that nothing half-written is ever left under the final name.

A file is written under `NAME.tmp` and renamed into place (`os.replace` is atomic on one
filesystem); a folder is filled under `NAME.tmp` and swapped in whole, so a reader sees the old
folder or the new one, never a mix, and files of an older version cannot linger in the new one.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path


def write_bytes_atomic(path: Path, data: bytes) -> Path:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return path


def write_text_atomic(path: Path, text: str) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: Path, data: dict) -> Path:
    return write_text_atomic(path, json.dumps(data, indent=1))


def fresh_dir(folder: Path) -> Path:
    """An empty temporary folder beside `folder`, to fill and then `swap_in_dir`."""
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def swap_in_dir(tmp: Path, folder: Path) -> None:
    """Put the completed `tmp` folder at `folder`, replacing what was there."""
    if folder.exists():
        old = folder.with_name(folder.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(folder, old)
        os.replace(tmp, folder)
        shutil.rmtree(old)
    else:
        os.replace(tmp, folder)
