"""Write-then-rename, so that a reader or a concurrent writer never sees a half-written file or folder."""

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def write_atomically(path: str | os.PathLike, text: str) -> None:
    """`text` into `path`, written whole to a scratch file of this process first and then renamed into place."""
    scratch = f"{path}.tmp-{os.getpid()}"
    with open(scratch, "w") as file:
        file.write(text)
    os.replace(scratch, path)


@contextmanager
def folder_written_atomically(target: str | os.PathLike) -> Iterator[Path]:
    """
    Yields a path (not yet created) in a private scratch folder beside `target`; when the block ends without error,
    what was written there is renamed to `target`. If another process renamed its own first, that one is kept. The
    scratch folder is removed whatever happens, so an interrupted run leaves nothing behind.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield scratch / target.name
        try:
            (scratch / target.name).rename(target)
        except OSError:
            if not target.is_dir():  # not another process having finished first: a real failure
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
