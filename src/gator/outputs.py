"""Where commands write: one policy for every output file and folder.

Every command that writes follows the same four rules, so no run loses earlier work or fails late:

1. Check first. Before any long work starts, `output_dir` / `output_file` make sure the output can be
   written: not an existing file where a folder is wanted (or the reverse), on a writable filesystem
   (a probe file is created and removed). Training a tokenizer for minutes and then failing to save
   it is the failure this prevents.
2. Never overwrite silently. An output that already holds earlier work (named by the caller: a
   checkpoint, a manifest, model files) is refused with a message that offers `--force` (and, for
   training, `--resume`).
3. Write atomically. `atomic_write` writes a temporary file beside the target and renames it over the
   target only when it is complete and flushed; `replace_dir` builds a whole folder beside the target
   and swaps it in, so a forced re-export leaves no stale file of the old one (a `tokenizer.json` of
   another vocabulary next to new weights). A failure removes the temporary file or folder.
4. Normal permissions. `tempfile.mkstemp` creates files with mode 0600 (owner only); the atomic
   writers give the file the mode a plain `open()` would (0666 minus the umask), so another user or a
   serving container can read the model files.

The library raises `GatorError` for refusals; the `gator` command prints any error as one line
(gator/cli.py), including OSErrors such as a full disk (`describe_os_error`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from fnmatch import fnmatch
from pathlib import Path
from typing import TypeVar

from gator.errors import GatorError

T = TypeVar("T")

# What a model folder holds (Gator's, or a transformers export): the names that count as earlier work in an
# export's output, and the only files a forced export may replace.
MODEL_FOLDER_FILES = ("config.json", "generation_config.json", "*.safetensors", "model.safetensors.index.json",
                      "pytorch_model*.bin", "tokenizer*", "special_tokens_map.json", "added_tokens.json", "vocab.json",
                      "merges.txt", "chat_template.jinja", ".*.tmp")


def umask() -> int:
    """The process's umask (read without changing it where the OS allows)."""
    try:  # Linux reports it in /proc
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode `open()` gives a new file under the current umask (usually 0644)."""
    return 0o666 & ~umask()


def atomic_write(path: str | Path, write: Callable[[str], object]) -> None:
    """Write `path` through `write(tmp_path)` into a temporary file in the same folder, then rename it over
    `path`: a crash or a full disk leaves the previous file as it was and no temporary file behind. The
    file gets the umask's normal mode (not mkstemp's 0600)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, file_mode())
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def check_writable(directory: str | Path) -> None:
    """Create and remove a probe file in `directory` (which must exist): a read-only filesystem or a
    folder without write permission fails here, with a message, instead of at the end of a long job."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".gator-write-test.", dir=directory)
    except OSError as err:
        raise GatorError(f"cannot write to {directory}: {describe_os_error(err, with_path=False)}") from None
    os.close(fd)
    os.remove(probe)


def _existing_parent(path: Path) -> Path:
    """The nearest folder above `path` that exists (where its missing folders would be created)."""
    parent = path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    return parent


def output_dir(path: str | Path, *, earlier_work: Iterable[str] = (), force: bool = False, resume: bool = False,
               flag: str = "--out", what: str = "earlier output", can_resume: bool = False,
               create: bool = True) -> Path:
    """Check an output folder before any work: it is a folder (or can be made), it is writable, and none
    of the `earlier_work` names (glob patterns) exist in it unless `force` or `resume` is set. With
    `create`, the folder is made (its parents too). Returns the path."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise GatorError(f"{flag} {path} is an existing file, not a folder; choose a folder path for {flag}")
    parent = _existing_parent(path)
    if not parent.is_dir():
        raise GatorError(f"{flag} {path}: {parent} is a file, not a folder; choose another {flag}")
    found = holds(path, earlier_work) if path.is_dir() else []
    if found and not (force or resume):
        offer = "--resume to continue it, --force to start over" if can_resume else "--force to replace it"
        raise GatorError(f"{path} already holds {what} ({', '.join(found[:4])}{' ...' if len(found) > 4 else ''}); "
                         f"pass {offer}, or choose another {flag}")
    if create:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise GatorError(f"cannot create {path} for {flag}: {describe_os_error(err)}") from None
        check_writable(path)
    else:
        check_writable(path if path.is_dir() else parent)
    return path


def output_file(path: str | Path, *, force: bool = False, flag: str = "--out") -> Path:
    """Check an output file before any work: not a folder, its folder writable (made if missing), and not
    an existing file unless `force`."""
    path = Path(path)
    if path.is_dir():
        raise GatorError(f"{flag} {path} is a folder; give a file path for {flag}")
    if path.exists() and not force:
        raise GatorError(f"{path} already exists; pass --force to overwrite it, or choose another {flag}")
    output_dir(path.parent if str(path.parent) else ".", flag=flag)
    return path


def holds(directory: str | Path, patterns: Iterable[str]) -> list[str]:
    """The entries of `directory` that match any of the glob `patterns` (sorted names)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    patterns = list(patterns)
    return sorted(p.name for p in directory.iterdir() if any(fnmatch(p.name, pat) for pat in patterns))


def replace_dir(final: str | Path, build: Callable[[Path], T], *, replaceable: Iterable[str] | None = None,
                flag: str = "--out") -> T:
    """Build a folder with `build(tmp)` beside `final`, then swap it in for `final` (whose old content goes).

    The swap is two renames, so `final` is always either the old folder or the complete new one. With
    `replaceable` (glob patterns), an existing `final` that holds anything else is refused rather than
    deleted: a forced export into a folder of other files must not remove them."""
    final = Path(final).absolute()
    if final.is_dir() and replaceable is not None:
        patterns = list(replaceable)
        other = sorted(p.name for p in final.iterdir() if not any(fnmatch(p.name, pat) for pat in patterns))
        if other:
            raise GatorError(f"{final} holds files that are not part of this output ({', '.join(other[:4])}"
                             f"{' ...' if len(other) > 4 else ''}), so --force will not replace it; choose another "
                             f"{flag} or remove them")
    if not final.exists() or (final.is_dir() and not any(final.iterdir())):
        final.mkdir(parents=True, exist_ok=True)
        return build(final)  # nothing to replace: build in place
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        result = build(tmp)
        os.chmod(tmp, 0o777 & ~umask())  # the mode mkdir would give (mkdtemp makes 0700)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = final.parent / f".{final.name}.old"
    shutil.rmtree(old, ignore_errors=True)
    os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    return result


def describe_os_error(err: OSError, with_path: bool = True) -> str:
    """An OSError in a few words, with the path when it has one: 'No space left on device', ..."""
    reasons = {errno.ENOSPC: "no space left on device: free some disk space",
               errno.EROFS: "read-only file system: choose a path on a writable one",
               errno.EACCES: "permission denied: choose a path you may write to",
               errno.EPERM: "operation not permitted: choose a path you may write to",
               errno.EISDIR: "is a folder, not a file: give a file path",
               errno.ENOTDIR: "a part of this path is a file, not a folder"}
    reason = reasons.get(err.errno) or err.strerror or str(err)
    return f"{err.filename}: {reason}" if with_path and err.filename is not None else reason
