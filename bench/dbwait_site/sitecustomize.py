"""bench/dbwait.py's probe, loaded by the request node's processes only (through PYTHONPATH).

With ``BENCH_DBWAIT_DIR`` set, every SQL statement's round trip as the Django process sees it
(from handing the statement to the driver to having its result) is appended to
``$BENCH_DBWAIT_DIR/<pid>`` as ``<epoch seconds> <milliseconds>``. Without it, nothing happens.
"""

import os
import time

_DIRECTORY = os.environ.get("BENCH_DBWAIT_DIR")

if _DIRECTORY:
    import django.db.backends.utils as _utils

    _execute = _utils.CursorWrapper._execute
    _files: dict[int, object] = {}

    def _timed_execute(self, sql, params, *rest):
        started = time.perf_counter()
        try:
            return _execute(self, sql, params, *rest)
        finally:
            elapsed = time.perf_counter() - started
            pid = os.getpid()
            out = _files.get(pid)
            if out is None:  # one file per process (gunicorn forks its workers after this ran)
                out = _files[pid] = open(os.path.join(_DIRECTORY, str(pid)), "a", buffering=1)  # noqa: SIM115
            out.write(f"{time.time():.4f} {elapsed * 1000:.3f}\n")

    _utils.CursorWrapper._execute = _timed_execute
