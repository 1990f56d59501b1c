"""`ojs-run --reload`: what to watch, and the watcher process.

The supervisor never imports the handlers module (each pool imports it after the fork), so a pool
forked after an edit runs the edited code. The watcher runs in a child process of its own (the
supervisor holds no thread while it forks) and writes one byte to a pipe for each batch of
changed Python files; the supervisor then forks a short-lived process that imports the module
to see that it still imports, and only then replaces the pools, draining them as on SIGTERM (see
:mod:`runtime.supervisor`). An edit that does not import leaves the running pools alone.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from importlib.machinery import PathFinder

logger = logging.getLogger(__name__)

DEBOUNCE_MS = 300  # changes this close together are one reload (an editor saving several files)
STEP_MS = 50
IDLE_MS = 500  # how long the watcher waits before it reports itself watching


def source_paths(module: str) -> tuple[str, ...]:
    """The directories of the handlers' top-level package (or of the module's own file), found
    without importing anything: an import here would be inherited, stale, by every pool."""
    spec = PathFinder.find_spec(module.partition(".")[0], sys.path)
    if spec is None:
        return ()
    if spec.submodule_search_locations:
        return tuple(os.path.abspath(p) for p in spec.submodule_search_locations)
    if spec.origin:
        return (os.path.dirname(os.path.abspath(spec.origin)),)
    return ()


def watch(paths: tuple[str, ...], changed_fd: int) -> int:
    """In the watcher process: report each batch of changed Python files on `changed_fd`."""
    import watchfiles

    # Stopped like the other children: leave the watch loop (it checks for signals every step).
    signal.signal(signal.SIGTERM, lambda _sig, _frame: sys.exit(0))
    watching = False
    for changes in watchfiles.watch(
        *paths, watch_filter=watchfiles.PythonFilter(), debounce=DEBOUNCE_MS, step=STEP_MS,
        rust_timeout=IDLE_MS, yield_on_timeout=True, raise_interrupt=False,
    ):
        if not watching:
            logger.info("watching for changes: %s", ", ".join(paths))
            watching = True
        if changes:
            names = sorted(os.path.relpath(path, paths[0]) for _change, path in changes)
            logger.info("changed: %s", ", ".join(names))
            os.write(changed_fd, b"r")
    return 0


def probe(module: str) -> int:
    """In a fresh fork: does the handlers module import? Exit code 0, or 3 with the reason logged."""
    from runtime.handlers import ModuleImportError, load
    from runtime.liveness import EXIT_BOOT_ERROR, EXIT_OK

    try:
        load(module)
    except ModuleImportError as err:
        logger.error("%s", err)
        return EXIT_BOOT_ERROR
    return EXIT_OK
