"""Where wardgate puts a Unix socket of its own: the private run folder, unless the path is too long.

``sun_path`` holds 108 bytes on Linux (104 on BSDs): a socket under a deep home goes into a private
temporary folder instead (``mkdtemp`` makes it 0700), which its owner removes when it stops.
A process killed with SIGKILL removes nothing: ``remove_dead_sockets`` clears what it left.
"""

from __future__ import annotations

import os
import socket
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


def remove_dead_sockets(folder: Path, pattern: str) -> list[Path]:
    """Remove the sockets in ``folder`` matching ``pattern`` that nobody listens on any more (left
    by a process that was killed); returns them. A socket that answers, or that cannot be probed,
    is left alone. Blocking: call it on a thread."""
    removed = []
    for path in folder.glob(pattern):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.settimeout(1.0)
            try:
                probe.connect(str(path))
            except ConnectionRefusedError:  # a socket file with no listener behind it
                path.unlink(missing_ok=True)
                removed.append(path)
            except OSError:
                continue
    return removed
