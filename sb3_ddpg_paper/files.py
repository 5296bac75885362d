"""
File helpers: atomic writes (a crash never leaves a half-written file) and the check of a saved model before anything
in it is unpickled. Used by :meth:`PaperDDPG.save <sb3_ddpg_paper.PaperDDPG.save>` / ``load`` and by
:mod:`sb3_ddpg_paper.checkpoints`.
"""

import contextlib
import hashlib
import io
import json
import os
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

TEMP_PREFIX = ".tmp-"  # temporary files and directories, removed by the next writer after a crash
_CHUNK = 1 << 20


def fsync_path(path: Path) -> None:
    """fsync a file or a directory (a directory's fsync makes the names it holds durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def atomic_write(path: str | os.PathLike, write: Callable[[io.BufferedWriter], object]) -> Path:
    """
    Write a file so that ``path`` holds either its old content or the complete new one, whatever happens:
    ``write`` fills a temporary file in the same directory, which is flushed, fsynced and renamed over ``path``
    (``os.replace``, atomic on POSIX and Windows); the directory is then fsynced.

    :param path: the file to write
    :param write: a function that writes the content into the binary file object it is given
    :return: the path written
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    fsync_path(path.parent)
    return path


@contextlib.contextmanager
def _open_zip(path: str | os.PathLike) -> Iterator[zipfile.ZipFile]:
    try:
        with zipfile.ZipFile(path) as archive:
            yield archive
    except zipfile.BadZipFile as error:
        raise ValueError(
            f"{path} is not a complete zip file ({error}): truncated or corrupted. PaperDDPG.load accepts the zip "
            "written by PaperDDPG.save."
        ) from error


def check_saved_model(path: str | os.PathLike, algorithm_name: str = "PaperDDPG") -> None:
    """
    Check, without unpickling anything, that ``path`` is a complete, uncorrupted zip saved by ``PaperDDPG.save``:
    every member's CRC, the presence of the model's data and parameters, and that the saved policy is a
    ``PaperDDPGPolicy`` (not another algorithm's).

    :raises ValueError: naming what is wrong
    """
    with _open_zip(path) as archive:
        try:
            bad = archive.testzip()
        except (zipfile.BadZipFile, OSError, EOFError) as error:
            bad = f"? ({error})"
        if bad is not None:
            raise ValueError(
                f"{path} is corrupted: member {bad} fails its CRC check. PaperDDPG.load accepts the zip written by "
                "PaperDDPG.save."
            )
        names = set(archive.namelist())
        missing = {"data", "policy.pth"} - names
        if missing:
            raise ValueError(
                f"{path} is not a complete saved model: it lacks {sorted(missing)} (the file is truncated or corrupted, "
                "or was not written by PaperDDPG.save)."
            )
        try:
            data = json.loads(archive.read("data"))
        except ValueError as error:
            raise ValueError(f"{path}: the 'data' entry is not valid JSON ({error}).") from error
    policy_class = data.get("policy_class") if isinstance(data, dict) else None
    module = policy_class.get("__module__", "?") if isinstance(policy_class, dict) else "?"
    if "qf_learning_rate" not in data or not str(module).startswith("sb3_ddpg_paper"):
        name = str(policy_class.get(":type:", "")) if isinstance(policy_class, dict) else ""
        raise ValueError(
            f"{path} was not saved by {algorithm_name}: its policy class comes from {module!r} {name}. "
            f"{algorithm_name}.load accepts files written by {algorithm_name}.save; load other algorithms' files with "
            "their own class (e.g. stable_baselines3.TD3.load)."
        )
