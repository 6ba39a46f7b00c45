"""Files under `.orchestrate/`: the source of truth anyone can read.

Signals, status records and the events log live here; doit's database is
only a cache. Every JSON file is replaced atomically (tmp + rename), so a
reader sees the old record or the new one, never a torn one.

Which writes are fsynced before their rename (`durable=True`): `.done`
signals, external signals, and status records of a settled run (done,
failed, cancelled, waiting for a retry, stopping). Not fsynced: status
records of a run in progress (launching, running, tracked descendants),
upstream and prompt files of a run, `results/` and the shared empty
upstream file: they matter only while the machine is up, and fsyncing them
would cost the launch rate. `events.jsonl` is appended without fsync.
"""
from __future__ import annotations

import fcntl
import glob
import hashlib
import json
import os
import stat as stat_module
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any, Callable, Generic, TypeVar

from ..core.errors import UserError

from ..core.checks import feedback_relpath
from ..core.records import StatusRecord  # noqa: F401  (re-exported: the record type)


class StateFileError(UserError):
    """A state file exists but cannot be understood (hand-edited, disk full)."""


class StateFolderReadOnly(UserError):
    """The state folder cannot be written: only `doit status` can still look."""

    def __init__(self, folder: Path, err: OSError):
        super().__init__(f"cannot write the state folder {folder} ({err.strerror}); "
                         "doit status can still show it, other commands need write access")


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Layout:
    """Where each kind of state file lives, for one workspace.

    Paths are built once and remembered: a pass asks for thousands of them,
    and pathlib's construction would otherwise dominate its cost.
    """
    root: Path

    @cached_property
    def base(self) -> Path:
        return self.root / ".orchestrate"

    @property
    def lock_path(self) -> Path:
        return self.base / "lock"

    @property
    def events_path(self) -> Path:
        return self.base / "events.jsonl"

    @cached_property
    def runs_dir(self) -> Path:
        return self.base / "runs"

    @cached_property
    def signals_dir(self) -> Path:
        return self.base / "signals"

    @cached_property
    def status_dir(self) -> Path:
        return self.base / "status"

    @lru_cache(maxsize=None)
    def signal(self, pipeline: str, agent: str) -> Path:
        return self.base / "signals" / pipeline / f"{agent}.done"

    def external_signal(self, name: str) -> Path:
        return self.base / "signals" / f"{name}.signal"

    @lru_cache(maxsize=None)
    def status(self, pipeline: str, agent: str) -> Path:
        return self.base / "status" / pipeline / f"{agent}.json"

    def log(self, pipeline: str, agent: str, number: int | None = None) -> Path:
        suffix = f".{number}.log" if number else ".log"
        return self.base / "logs" / pipeline / f"{agent}{suffix}"

    def earlier_logs(self, pipeline: str, agent: str) -> list[Path]:
        """`<agent>.<N>.log`: the logs of an agent's earlier runs."""
        folder = self.base / "logs" / pipeline
        prefix = f"{agent}."
        return sorted(folder / name for name in (os.listdir(folder) if folder.is_dir() else ())
                      if name.startswith(prefix) and name.endswith(".log")
                      and name[len(prefix):-4].isdigit())

    def exit_file(self, run_id: str) -> Path:
        return self.runs_dir / f"{run_id}.exit"

    def prompt_file(self, run_id: str) -> Path:
        return self.runs_dir / f"{run_id}.prompt"

    def check_verdict(self, run_id: str) -> Path:
        """The check's verdict (JSON), written by the check runner in the wrapper."""
        return self.runs_dir / f"{run_id}.check"

    def check_marker(self, run_id: str) -> Path:
        """Exists while the run's check runs: the status says `checking`."""
        return self.runs_dir / f"{run_id}.checking"

    def check_files(self, run_id: str) -> tuple[Path, ...]:
        return self.check_verdict(run_id), self.check_marker(run_id)

    def check_log(self, pipeline: str, agent: str) -> Path:
        return self.base / "logs" / pipeline / f"{agent}.check.log"

    def setup_log(self, pipeline: str, agent: str) -> Path:
        return self.base / "logs" / pipeline / f"{agent}.setup.log"

    def setup_failed(self, run_id: str) -> Path:
        """Exists when the run's worktree set-up failed (the wrapper writes it)."""
        return self.runs_dir / f"{run_id}.setup-failed"

    def commit_failed(self, run_id: str) -> Path:
        """git's errors while the wrapper committed what the agent left; kept
        only when the commit failed."""
        return self.runs_dir / f"{run_id}.commit-failed"

    def merge_log(self, pipeline: str, agent: str) -> Path:
        """The last merge of the agent's branch and its merge check's output."""
        return self.base / "logs" / pipeline / f"{agent}.merge.log"

    def feedback(self, pipeline: str, agent: str) -> Path:
        """What a failed check (or a person, `doit retry --feedback`) tells the agent."""
        return self.root / feedback_relpath(pipeline, agent)

    @property
    def ratelimits_dir(self) -> Path:
        """ratelimits/<preset>.json: until when a preset's CLI said it is limited."""
        return self.base / "ratelimits"

    def removed_outputs(self, pipeline: str, agent: str) -> Path:
        """Where a retired fan-out instance's outputs are moved (same relative paths)."""
        return self.base / "removed" / pipeline / agent

    def result(self, pipeline: str, agent: str) -> Path:
        return self.base / "results" / pipeline / f"{agent}.md"

    def upstream_file(self, run_id: str) -> Path:
        return self.runs_dir / f"{run_id}.upstream.json"

    @cached_property
    def no_upstream_file(self) -> Path:
        """One shared `{}` for every agent that consumed no upstream signal."""
        return self.runs_dir / "none.upstream.json"

    def relative(self, path: Path) -> str:
        return os.path.relpath(path, self.root)

    def make_dirs(self, pipelines: list[str] | tuple[str, ...] = ()) -> None:
        for sub in ("runs", "signals", "status", "logs"):
            (self.base / sub).mkdir(parents=True, exist_ok=True)
        for name in pipelines:
            for sub in ("signals", "status", "logs"):
                (self.base / sub / name).mkdir(exist_ok=True)
        if not self.no_upstream_file.exists():
            write_atomic(self.no_upstream_file, "{}\n", durable=False)


def write_atomic(path: Path, text: str, durable: bool = True) -> None:
    """Replace `path` so readers never see a partial file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        try:
            _write_all(fd, text.encode())
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)   # a full disk must not leave litter behind
        raise


def _write_all(fd: int, data: bytes) -> None:
    """os.write may write less than asked (a signal, a full pipe or disk)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def write_json(path: Path, data: dict[str, Any], durable: bool = True) -> None:
    # One line, no indent: json's C encoder is only used without indent, and
    # status files are written several times per agent (pipe to `jq` to read).
    write_atomic(path, json.dumps(data, sort_keys=True) + "\n", durable)


def read_json(path: Path) -> dict[str, Any] | None:
    """The file's JSON object, None if absent; StateFileError if unreadable."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except FileNotFoundError:
        return None
    try:
        data = json.loads(raw)
    except ValueError as err:
        raise corrupt(path, str(err)) from None
    if not isinstance(data, dict):
        raise corrupt(path, "expected a JSON object")
    return data


def corrupt(path: Path, detail: str) -> StateFileError:
    """The one-line error for a state file that cannot be understood, with
    the way out and what it costs: without its status record an agent is
    no longer known to be current, so it runs again (a paid agent costs
    again), and `doit forget TASK` is the command that clears the record."""
    if path.parent.parent.name == "status" and path.suffix == ".json":
        task = f"{path.parent.name}:{path.stem}"
        return StateFileError(f"{path}: corrupt state file ({detail}); doit forget {task} "
                              f"clears it, and {task} then runs again from the start")
    return StateFileError(f"{path}: corrupt state file ({detail}); delete it to rebuild it "
                          "(an agent whose result it recorded may then run again)")


def parse_status(path: Path) -> StatusRecord | None:
    data = read_json(path)
    if data is None:
        return None
    try:
        return StatusRecord.from_json(data)
    except TypeError as err:
        raise corrupt(path, str(err)) from None


def read_status(layout: Layout, pipeline: str, agent: str) -> StatusRecord | None:
    return parse_status(layout.status(pipeline, agent))


T = TypeVar("T")


class FileCache(Generic[T]):
    """Parsed state files, re-read only when their stat changes.

    Every state file is replaced by rename, so new content always comes with
    a new inode and mtime; a stat is far cheaper than a read and a parse.
    Cached values are shared: never mutate them (records change by replace()).
    """

    def __init__(self, parse: Callable[[Path], T | None]):
        self.parse = parse
        self.entries: dict[Path, tuple[tuple[int, int, int], T | None]] = {}
        # With inotify on the files' folders, an entry no event has touched
        # since it was read is still current: not even a stat is needed.
        self.trusted = False
        self.dirty: set[Path] = set()

    def mark_dirty(self, path: Path) -> None:
        self.dirty.add(path)

    def distrust_all(self) -> None:
        self.entries.clear()
        self.dirty.clear()

    @staticmethod
    def _key(path: Path) -> tuple[int, int, int] | None:
        try:
            info = os.stat(path)
        except FileNotFoundError:
            return None
        return info.st_ino, info.st_mtime_ns, info.st_size

    def remember(self, path: Path, value: T | None) -> None:
        """We just wrote `value` to `path`: no need to read it back."""
        self.dirty.discard(path)
        key = self._key(path)
        if key is None:
            self.entries.pop(path, None)
        else:
            self.entries[path] = (key, value)

    def forget(self, path: Path) -> None:
        self.entries.pop(path, None)

    def changed(self, path: Path) -> bool:
        """Does `path` differ from what we last read or wrote?"""
        key = self._key(path)
        hit = self.entries.get(path)
        return key != (hit[0] if hit else None)

    def get(self, path: Path) -> T | None:
        if self.trusted and path not in self.dirty and path in self.entries:
            return self.entries[path][1]
        self.dirty.discard(path)
        key = self._key(path)
        if key is None:
            self.entries.pop(path, None)
            return None
        hit = self.entries.get(path)
        if hit is not None and hit[0] == key:
            return hit[1]
        value = self.parse(path)
        self.entries[path] = (key, value)
        return value


def write_status(layout: Layout, record: StatusRecord, durable: bool = True) -> None:
    write_json(layout.status(record.pipeline, record.agent), record.to_json(), durable)


def event(kind: str, **details: Any) -> dict[str, Any]:
    return {"ts": utc_now(), "event": kind, **details}


def append_events(layout: Layout, events: list[dict[str, Any]]) -> None:
    """Lifecycle events, one JSON line each, in one O_APPEND write so that
    concurrent writers never interleave inside a line."""
    if not events:
        return
    text = "".join(json.dumps(e, sort_keys=True) + "\n" for e in events)
    fd = os.open(layout.events_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        _write_all(fd, text.encode())
    finally:
        os.close(fd)


def append_event(layout: Layout, kind: str, **details: Any) -> None:
    append_events(layout, [event(kind, **details)])


def try_flock(path: Path) -> int | None:
    """Open (create) `path` and take its exclusive flock without waiting:
    the held fd, or None if another process holds it. For the locks whose
    holder only says "someone is already doing this" (an advancer's slot,
    the telemetry sender)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


class SchedulingLock:
    """flock on `.orchestrate/lock`: one scheduling pass at a time.

    The lock belongs to the open file, so a forked child that keeps the
    descriptor keeps the lock after its parent exits.
    """

    def __init__(self, layout: Layout):
        self.path = layout.lock_path
        self.fd: int | None = None

    def acquire(self, blocking: bool = True) -> bool:
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as err:
            raise StateFolderReadOnly(self.path.parent, err) from None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(self.fd)
            self.fd = None
            return False
        return True

    def release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    def forget(self) -> None:
        """Close our descriptor without unlocking: a forked child still holds it."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> "SchedulingLock":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"<SchedulingLock {self.path} {'held' if self.fd is not None else 'free'}>"


def expand_patterns(root: Path, patterns: tuple[str, ...]) -> tuple[dict[str, os.stat_result], list[str]]:
    """Workspace files named by `patterns` (globs, `**` too) -> (stat by relative
    path, patterns that matched no regular file). The one place inputs, outputs
    and doit's file_dep are expanded, so they always agree."""
    found: dict[str, os.stat_result] = {}
    missing = []
    for pattern in patterns:
        names = (sorted(glob.glob(pattern, root_dir=root, recursive=True))
                 if any(c in pattern for c in "*?[") else [pattern])
        matched = False
        for rel in names:
            try:
                info = os.stat(root / rel)
            except OSError:
                continue
            if stat_module.S_ISREG(info.st_mode):
                found[os.path.normpath(rel)] = info
                matched = True
        if not matched:
            missing.append(pattern)
    return found, missing


def is_inside(root: Path, path: Path | str) -> bool:
    """Does `path`, with every symlink resolved, stay inside `root`?"""
    real_root = os.path.realpath(root)
    return os.path.commonpath([real_root, os.path.realpath(path)]) == real_root


def remove_inside(root: Path, path: Path) -> bool:
    """Remove the file `path` only if it is inside `root` at the moment of
    removal: its folder is opened and checked, then the entry is unlinked
    relative to that open folder, so a folder swapped for a symlink between
    the check and the unlink cannot redirect it. False if refused or absent."""
    try:
        folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        if not is_inside(root, f"/proc/self/fd/{folder}"):
            return False
        try:
            info = os.stat(path.name, dir_fd=folder, follow_symlinks=False)
        except FileNotFoundError:
            return False
        if stat_module.S_ISLNK(info.st_mode) and not is_inside(root, path):
            return False          # a link to somewhere outside: not ours to judge
        if stat_module.S_ISDIR(info.st_mode):
            return False
        os.unlink(path.name, dir_fd=folder)
        return True
    finally:
        os.close(folder)


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def event_objects(data: bytes) -> list[dict[str, Any]]:
    """The objects of events.jsonl lines; a torn or foreign line is skipped."""
    found = []
    for line in data.splitlines():
        try:
            item = json.loads(line)
        except ValueError:
            continue
        if isinstance(item, dict):
            found.append(item)
    return found
