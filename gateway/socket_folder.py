"""Where wardgate puts a Unix socket of its own: the private run folder, unless the path is too long.

``sun_path`` holds 108 bytes on Linux (104 on BSDs): a socket under a deep home goes into a private
temporary folder instead (``mkdtemp`` makes it 0700), which its owner removes when it stops.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

SUN_PATH_MAX = 100  # stay clear of both limits


def socket_folder(folder: Path, longest_name: str, prefix: str) -> tuple[Path, Path | None]:
    """The folder for sockets named up to ``longest_name``: ``folder``, or a new private temporary
    one when a path in ``folder`` would be too long; that one is also returned second, to remove."""
    if len(os.fsencode(folder / longest_name)) <= SUN_PATH_MAX:
        return folder, None
    own = Path(tempfile.mkdtemp(prefix=prefix))
    return own, own
