"""The file watcher: raw filesystem changes in, classified :class:`FilesChanged` out.

It watches the project root recursively (not single files: an editor's atomic
rename-save silently ends a watch on the file itself), prunes ignored directories,
and stats each changed path so that the core can tell the pipeline's own writes from a
user's edit.  A brand-new directory is reported without the files just written into it,
so an added directory is expanded into its files; a directory merely "modified" (its
own metadata) is not a change of anything declared.

``awatch`` is stopped through its ``stop_event``: cancelling it alone waits for the
Rust side to time out, which can take seconds.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import trio
import watchfiles

from .._config import Config
from ..pipeline._model import FileSignature
from ._classify import PathClassifier, PathKind
from ._core import FileChange, FilesChanged

#: watchfiles' quiet period: a burst ends after this many ms without a new change.
STEP_MS = 10
#: A changed directory expands into at most this many files.
MAX_FILES_PER_DIRECTORY = 10_000


class ProjectWatcher:
    """Turns filesystem events under the project root into :class:`FilesChanged`."""

    def __init__(self, config: Config) -> None:
        self._root = config.project_root.resolve()
        self._debounce_ms = config.debounce_ms
        self._classifier = PathClassifier(config)
        self.stop_event = trio.Event()

    def _keep(self, change: watchfiles.Change, path: str) -> bool:
        rel = self._relative(path)
        return rel is not None and self._classifier.classify(rel) is not PathKind.IGNORED

    def _relative(self, path: str) -> str | None:
        try:
            rel = Path(path).relative_to(self._root)
        except ValueError:
            return None
        text = rel.as_posix()
        return None if text in ("", ".") else text

    def classify(self, batch: Iterable[tuple[watchfiles.Change, str]]) -> FilesChanged | None:
        """Classify and stat a batch of changes; ``None`` when nothing is left."""
        changes: dict[str, FileChange] = {}
        for change, raw in batch:
            rel = self._relative(raw)
            if rel is None:
                continue
            for path, signature in _expand(self._root, rel, change):
                kind = self._classifier.classify(path)
                if kind is PathKind.IGNORED:
                    continue
                changes[path] = FileChange(path, kind is PathKind.CODE, signature)
        if not changes:
            return None
        return FilesChanged(tuple(changes[p] for p in sorted(changes)))

    async def run(
        self,
        send: trio.MemorySendChannel[FilesChanged],
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Watch until :attr:`stop_event` is set, sending each classified batch."""
        task_status.started()
        try:
            async for batch in watchfiles.awatch(
                self._root,
                watch_filter=self._keep,
                debounce=max(self._debounce_ms, STEP_MS),
                step=STEP_MS,
                stop_event=self.stop_event,
                rust_timeout=1000,
            ):
                # Stats every path (and walks an added directory): off the trio thread.
                changed = await trio.to_thread.run_sync(self.classify, batch)
                if changed is not None:
                    # No log line here: a log redirected into the project is itself a
                    # changed file, and logging it would loop.  The core publishes the
                    # changes that matter (``files_changed``).
                    await send.send(changed)
        finally:
            # On a crash path nobody else sets it, and awatch would then delay exit.
            self.stop_event.set()


def _signature(path: Path) -> FileSignature | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def _expand(
    root: Path, rel: str, change: watchfiles.Change
) -> list[tuple[str, FileSignature | None]]:
    """A file, a deleted path, or every file below an added directory, with signatures."""
    full = root / rel
    if not full.is_dir():
        return [(rel, _signature(full))]
    if change is not watchfiles.Change.added:
        return []
    found: list[tuple[str, FileSignature | None]] = []
    for dirpath, dirnames, filenames in os.walk(full):
        dirnames.sort()
        for name in sorted(filenames):
            file = Path(dirpath) / name
            found.append((file.relative_to(root).as_posix(), _signature(file)))
            if len(found) >= MAX_FILES_PER_DIRECTORY:
                return found
    return found
