"""What dualtrain installs once, on first use, into its cache: the TensorFlow.js converter's
environment and the npm packages of the tfjs check and the browser page.

Each install goes into `${DUALTRAIN_CACHE:-~/.cache/dualtrain}/<name>`, named by the hash of
what it installs (a new pin list or lockfile gets a new directory beside the old one). Concurrent
callers are safe: one builds under `<name>.lock`, into a temporary directory renamed into place
when complete; the others wait for it and use its result. Nothing half-made is ever taken for an
install.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from dualtrain.errors import DualtrainError

# `npm ci` from a lockfile, with npm's cache warm, takes seconds; cold, under a minute here.
NPM_TIMEOUT_S = 600
_MARK = ".dualtrain-complete"


def cache_root() -> Path:
    """`$DUALTRAIN_CACHE`, else `~/.cache/dualtrain`."""
    given = os.environ.get("DUALTRAIN_CACHE")
    return Path(given).expanduser() if given else Path.home() / ".cache" / "dualtrain"


def file_hash(path: Path, digits: int = 12) -> str:
    """The first `digits` hex digits of the file's SHA-256: names an install by what it pins."""
    return hashlib.sha256(path.read_bytes()).hexdigest()[:digits]


def complete(target: Path) -> bool:
    return (target / _MARK).is_file()


@contextlib.contextmanager
def building(target: Path, error: type[DualtrainError]) -> Iterator[Path | None]:
    """Holds `<target>.lock`; yields a fresh temporary directory to build in, marked complete
    and renamed to `target` when the block ends without an error, or None where `target` is
    already complete (another process built it while this one waited).

    Raises:
        error: the cache directory cannot be written (one line: what to set instead).
    """
    root = target.parent
    try:
        root.mkdir(parents=True, exist_ok=True)
        lock = open(target.with_name(target.name + ".lock"), "a+", encoding="utf-8")  # noqa: SIM115
    except OSError as err:
        raise error(
            f"cannot write the cache directory {root}: {err.strerror}; set DUALTRAIN_CACHE to a "
            "writable directory"
        ) from err
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or the process ends
        if complete(target):
            yield None
            return
        if target.exists():  # an incomplete copy (removed in part by hand): made afresh
            shutil.rmtree(target)
        work = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=root))
        work.chmod(0o755)  # mkdtemp's 0700: a shared cache stays readable by others
        try:
            yield work
            (work / _MARK).write_text("", encoding="utf-8")
            work.rename(target)
        finally:
            shutil.rmtree(work, ignore_errors=True)


def npm_ci(
    work: Path, package_json: Path, lockfile: Path, what: str, error: type[DualtrainError]
) -> None:
    """`npm ci` of `package_json` and its `lockfile` in `work` (no install scripts; npm's cache
    first, so a reinstall works offline where the cache has the packages).

    Raises:
        error: npm is missing, timed out or failed (one line: what npm said, what to do).
    """
    npm = shutil.which("npm")
    if npm is None:
        raise error(
            f"{what} is installed once with npm, and npm is not on PATH; install Node.js and npm "
            "(e.g. apt-get install nodejs npm) and run this again"
        )
    shutil.copy2(package_json, work / "package.json")
    shutil.copy2(lockfile, work / "package-lock.json")
    command = [npm, "ci", "--ignore-scripts", "--prefer-offline", "--no-audit", "--no-fund",
               "--loglevel=error"]  # fmt: skip
    try:
        done = subprocess.run(
            command, cwd=work, capture_output=True, text=True, timeout=NPM_TIMEOUT_S
        )
    except subprocess.TimeoutExpired as err:
        raise error(
            f"npm ci did not finish in {NPM_TIMEOUT_S} s installing {what}; check that the npm "
            "registry is reachable and run this again"
        ) from err
    if done.returncode != 0:
        raise error(
            f"npm ci failed installing {what} (exit code {done.returncode}: "
            f"{npm_reason(done.stderr or done.stdout)}); check that the npm registry is "
            "reachable and run this again"
        )


def npm_reason(text: str) -> str:
    """What npm said went wrong, in one line: its error code and first message, without the
    stack, the proxy hint and the "complete log" pointer."""
    said = [
        line.removeprefix("npm error").removeprefix("npm ERR!").strip()
        for line in text.splitlines()
    ]
    said = [line for line in said if line]
    code = next((line.split()[1] for line in said if line.startswith("code ")), None)
    skip = ("code ", "syscall ", "errno ", "at ", "A complete log", "If you are behind", "{", "}")
    message = next((line for line in said if not line.startswith(skip)), None)
    found = ": ".join(part for part in (code, message) if part)
    return found or (said[-1] if said else "no output")
