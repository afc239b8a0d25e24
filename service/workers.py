"""Several server processes on one port (SEQSERVE_WORKERS > 1).

One Python process answers a few thousand small requests a second however many cores the machine
has: the event loop, tokenising and the batch bookkeeping all hold the GIL (measured on a 16-core
host: 1.7k sentiment requests/s over HTTP while raw ONNX Runtime did 6k). Each worker here is a
whole server (its own models, batchers and decode scheduler) accepting on one socket that the
supervisor bound, so the kernel spreads connections across them.

The supervisor binds the socket, spawns the workers, restarts one that dies after it started
serving or whose event loop stops counting its heartbeat (stopped, deadlocked), stops everything
if one ends before it served (a broken model would fail the same way again, in a loop), and on
SIGTERM/SIGINT/SIGHUP passes SIGTERM on so that each worker drains its accepted work, then
exits 0. Prometheus metrics are summed across workers through prometheus-client's multiprocess
mode: PROMETHEUS_MULTIPROC_DIR (a fresh temporary folder unless the operator set one).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess
from multiprocessing.synchronize import Event
from types import FrameType

from service.server import STARTUP_FAILED, bind_socket, ports_free, serve
from service.settings import Settings

log = logging.getLogger("seqserve.workers")

_POLL_S = 0.2


@dataclass
class _Worker:
    process: BaseProcess
    serving: Event  # set by the worker once it accepts requests
    # counted up by the worker's event loop while it runs (service/server.py); None: not watched
    heartbeat: ctypes.c_uint64 | None = None
    beats_seen: int = 0
    beat_seen_at: float = field(default_factory=lambda: time.monotonic())  # when the count last moved
    # looked up at each call (not bound at import), so a test's clock is the supervisor's clock
    started_at: float = field(default_factory=lambda: time.monotonic())
    crashes_in_a_row: int = 0  # deaths after serving, each within _STABLE_S of its start
    respawn_at: float | None = None  # dead, and waiting out its backoff
    replacement: bool = False  # started in place of one that served


# A worker that keeps crashing is restarted after 0.5, 1, 2, ... up to 30 s, so a crash loop
# does not spin the machine; one that served for a minute counts as healthy again.
_BACKOFF_FIRST_S = 0.5
_BACKOFF_MAX_S = 30.0
_STABLE_S = 60.0


# A supervisor that has not polled for this long was itself stopped or starved (a paused container,
# a suspended host): its workers' silence over that gap says nothing about them.
_FROZEN_S = 2.0

_PR_SET_PDEATHSIG = 1  # prctl option (linux/prctl.h)


def _alive(pid: str) -> bool:
    """Whether process ``pid`` (digits from a file name) still runs."""
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def _metric_file_owner(name: str) -> str:
    """The pid a prometheus-client file belongs to (``counter_1234.db``)."""
    return name.rsplit("_", 1)[-1].removesuffix(".db")


def _metrics_prefix() -> str:
    """``seqserve-metrics-<pid namespace>-``: a supervisor's folder is ``<prefix><its pid>-...``.
    The namespace is in the name because a pid says whether a process lives only in its own
    namespace (containers sharing a /tmp volume each have theirs)."""
    with contextlib.suppress(OSError):
        namespace = os.readlink("/proc/self/ns/pid")  # "pid:[4026531836]"
        return f"seqserve-metrics-{''.join(c for c in namespace if c.isdigit())}-"
    return "seqserve-metrics-0-"


def _remove_orphaned_metrics_dirs(prefix: str) -> None:
    """Folders that supervisors killed outright (SIGKILL, OOM) left in the temporary folder: their
    owner is gone, nobody else will remove them. Only this pid namespace's."""
    with contextlib.suppress(OSError):
        for entry in os.scandir(tempfile.gettempdir()):
            owner = entry.name.removeprefix(prefix).split("-", 1)[0]
            if entry.name.startswith(prefix) and owner.isdigit() and entry.is_dir() and not _alive(owner):
                shutil.rmtree(entry.path, ignore_errors=True)
                log.info("removed %s, left by a server that was killed (pid %s)", entry.path, owner)


# what a worker's death by a signal most likely means, said beside the signal's name
_SIGNAL_HINTS = {
    signal.SIGKILL: "killed: out of memory (the kernel's or the container's OOM killer), or by an operator",
    # prometheus-client's metric files are memory-mapped and grown as holes: on a full file system
    # the first write into a hole is a SIGBUS, not an error the worker could log
    signal.SIGBUS: "a memory-mapped file could not be written: is PROMETHEUS_MULTIPROC_DIR's file system full?",
    signal.SIGSEGV: "a crash in native code (ONNX Runtime, gRPC, sentencepiece)",
    signal.SIGABRT: "aborted in native code (often a thread or memory limit: gRPC's pthread_create failed)",
}
_MIN_FREE_METRICS_BYTES = 16 << 20  # below this, warn: each worker's metric files grow in 1 MiB steps


def ended(exitcode: int | None) -> str:
    """How a worker ended, for a log line: "exit code 1", or a signal's name and what it likely means."""
    if exitcode is None or exitcode >= 0:
        return f"exit code {exitcode}"
    try:
        name = signal.Signals(-exitcode).name
    except ValueError:
        return f"signal {-exitcode}"
    hint = _SIGNAL_HINTS.get(signal.Signals(-exitcode))
    if hint and -exitcode == signal.SIGBUS:
        hint += f" ({os.environ.get('PROMETHEUS_MULTIPROC_DIR')})"
    return f"signal {name}" + (f" ({hint})" if hint else "")


def _check_metrics_dir(folder: str) -> None:
    """Writable (else OSError, refused at start), and warned about when nearly full."""
    probe = tempfile.NamedTemporaryFile(dir=folder, prefix=".seqserve-probe-")  # noqa: SIM115 - closed below
    probe.close()
    stat = os.statvfs(folder)
    free = stat.f_bavail * stat.f_frsize
    if free < _MIN_FREE_METRICS_BYTES:
        log.warning("PROMETHEUS_MULTIPROC_DIR=%s has %.1f MiB free: each worker's metric files grow in 1 MiB "
                    "steps, and a worker that cannot grow one dies (SIGBUS)", folder, free / (1 << 20))


def _worker(sock: socket.socket, serving: Event, heartbeat: ctypes.c_uint64) -> None:
    """A worker process: it drains and exits if its supervisor dies (SIGKILL, a crash) instead of
    serving on unmanaged, holding the port against the next start."""
    with contextlib.suppress(OSError, AttributeError):  # Linux only
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    parent = multiprocessing.parent_process()
    if parent is not None and os.getppid() != parent.pid:  # it died before the request above
        return
    serve(sock, serving, heartbeat)


_RESTART_REASONS = ("exited", "hung")


def prepare_operators_metrics_dir(folder: str) -> None:
    """Make the operator's PROMETHEUS_MULTIPROC_DIR ready for this run, a supervisor's or a single
    server's (prometheus-client keeps its values there whenever it is set): made if missing, an
    earlier run's files removed, its room checked. Raises OSError when it cannot be."""
    os.makedirs(folder, exist_ok=True)
    # an earlier run's files would be summed into this one's counters (prometheus-client: the
    # folder is wiped between runs; a single server's restart doubled its counts and its queue
    # limit); its own files only, and only those of processes that are gone: a second server
    # given the same folder by mistake deleted the first's live files (and is warned below)
    files = [name for name in os.listdir(folder) if name.endswith(".db")]
    # this process's own pid on a file is an earlier run's (a container's server is pid 1 each time)
    stale = [name for name in files if _metric_file_owner(name) == str(os.getpid())
             or not _alive(_metric_file_owner(name))]
    if len(stale) < len(files):
        log.warning("PROMETHEUS_MULTIPROC_DIR=%s holds metric files of running processes: another server "
                    "uses this folder, and /metrics sums both servers' counts; give each server its own", folder)
    for name in stale:
        os.remove(os.path.join(folder, name))
    if stale:
        log.warning("removed %d metric file(s) an earlier run left in PROMETHEUS_MULTIPROC_DIR=%s", len(stale), folder)
    _check_metrics_dir(folder)


def _count_restart(reason: str | None) -> None:
    """One replacement for ``reason``; None: every reason's series made, at 0, so that an alert's
    increase() sees the first restart (a series that appears at 1 has no increase)."""
    # imported here: prometheus-client picks its storage when first imported, after the supervisor
    # has set PROMETHEUS_MULTIPROC_DIR
    from service.metrics import WORKER_RESTARTS

    if reason is None:
        for known in _RESTART_REASONS:
            WORKER_RESTARTS.labels(known)
    else:
        WORKER_RESTARTS.labels(reason).inc()


class Supervisor:
    """Runs ``settings.workers`` copies of service.server.serve in spawned processes until
    SIGTERM/SIGINT."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.stopping = threading.Event()
        self.context = multiprocessing.get_context("spawn")  # fork would copy a half-started runtime
        self.workers: list[_Worker] = []
        self.metrics_dir: str | None = None
        self.polled_at: float | None = None

    def _spawn(self, sock: socket.socket, index: int) -> _Worker:
        serving = self.context.Event()
        heartbeat = self.context.RawValue(ctypes.c_uint64, 0)  # shared memory, no lock: one writer
        process = self.context.Process(target=_worker, args=(sock, serving, heartbeat),
                                       name=f"seqserve-worker-{index}")
        process.start()
        log.info("worker %d started (pid %s)", index, process.pid)
        return _Worker(process, serving, heartbeat)

    def _hung(self, worker: _Worker, now: float) -> float | None:
        """How long a serving worker's event loop has been silent, if longer than the timeout."""
        if worker.heartbeat is None:
            return None
        beats = worker.heartbeat.value
        if beats != worker.beats_seen:
            worker.beats_seen, worker.beat_seen_at = beats, now
            return None
        silent = now - worker.beat_seen_at
        timeout = self.settings.worker_heartbeat_timeout_s
        return silent if timeout and worker.serving.is_set() and silent > timeout else None

    def _on_signal(self, sig: int, frame: FrameType | None) -> None:
        if self.stopping.is_set():  # a second Ctrl+C or SIGTERM: the workers cut their drain short
            for worker in self.workers:
                if worker.process.pid is not None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(worker.process.pid, signal.SIGTERM)
        self.stopping.set()

    def _prepare_metrics_dir(self) -> None:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            prepare_operators_metrics_dir(os.environ["PROMETHEUS_MULTIPROC_DIR"])
            return
        # set before any worker starts: prometheus-client picks its storage when first imported
        prefix = _metrics_prefix()
        _remove_orphaned_metrics_dirs(prefix)
        self.metrics_dir = tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = self.metrics_dir
        _check_metrics_dir(self.metrics_dir)

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT; the exit code is 0 after a clean drain, STARTUP_FAILED if a
        worker could not start, 1 if a worker ended badly on the way out."""
        try:
            self._prepare_metrics_dir()
        except OSError as exc:
            log.error("SEQSERVE_WORKERS > 1 keeps metrics in a folder and could not make or write one (%s): set "
                      "PROMETHEUS_MULTIPROC_DIR to a writable folder (a read-only root file system needs a "
                      "writable /tmp volume)", exc)
            return STARTUP_FAILED
        try:
            sock = bind_socket(self.settings.host, self.settings.port)
        except OSError as exc:
            log.error("cannot listen on %s:%d: %s", self.settings.host, self.settings.port, exc)
            return STARTUP_FAILED
        if not ports_free(self.settings, http=False):  # the workers share the gRPC port (SO_REUSEPORT)
            sock.close()
            return STARTUP_FAILED
        _count_restart(None)
        originals = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
        code = 0
        try:
            self.workers = [self._spawn(sock, i) for i in range(self.settings.workers)]
            log.info("%d workers starting on http://%s:%d",
                     self.settings.workers, self.settings.host, self.settings.port)
            all_serving = False
            while not self.stopping.wait(_POLL_S):
                code = self._replace_dead(sock)
                if code:
                    break
                now_serving = all(w.serving.is_set() and w.respawn_at is None for w in self.workers)
                if now_serving and not all_serving:  # full capacity (again, after a replacement)
                    log.info("all %d workers serving", len(self.workers))
                all_serving = now_serving
            # the workers stop accepting at SIGTERM; the supervisor's copy of the listening socket
            # must close too, or new connections would wait in its backlog for the whole drain
            sock.close()
            code = max(code, self._stop_all())
        finally:
            for sig, handler in originals.items():
                signal.signal(sig, handler)
            sock.close()
            if self.metrics_dir:
                shutil.rmtree(self.metrics_dir, ignore_errors=True)
        return code

    def _replace_dead(self, sock: socket.socket) -> int:
        now = time.monotonic()
        if self.polled_at is not None and now - self.polled_at > _FROZEN_S:
            for worker in self.workers:  # the silence was the supervisor's own: count afresh
                worker.beat_seen_at = now
        self.polled_at = now
        for i, worker in enumerate(self.workers):
            process = worker.process
            if self.stopping.is_set():
                break
            if worker.respawn_at is not None:
                if now >= worker.respawn_at:
                    self.workers[i] = self._replace(sock, i, worker.crashes_in_a_row)
                continue
            hung = process.is_alive()
            if hung:
                silent = self._hung(worker, now)
                if silent is None:
                    continue
                # what it holds is lost either way; killed, its clients at least see their
                # connections close, and new ones go to a worker that answers
                log.error("worker %d (pid %s): its event loop has not run for %.1f s (stopped or deadlocked; "
                          "SEQSERVE_WORKER_HEARTBEAT_TIMEOUT_S=%g): killing it",
                          i, process.pid, silent, self.settings.worker_heartbeat_timeout_s)
                process.kill()
                process.join(5)
            self._forget_metrics(process)
            if not worker.serving.is_set() and not worker.replacement:
                log.error("worker %d ended with %s before it served: stopping (its log says why)",
                          i, ended(process.exitcode))
                return STARTUP_FAILED
            _count_restart("hung" if hung else "exited")
            # a replacement that could not start (memory still short, files being redeployed) is
            # one more quick crash: the other workers keep serving while it is retried
            # one that ended cleanly on its own (SIGTERM sent to it alone) is replaced, not counted as a crash
            stable = process.exitcode == 0 or (worker.serving.is_set() and now - worker.started_at >= _STABLE_S)
            worker.crashes_in_a_row = 0 if stable else worker.crashes_in_a_row + 1
            delay = min(_BACKOFF_FIRST_S * 2 ** max(worker.crashes_in_a_row - 1, 0), _BACKOFF_MAX_S) \
                if worker.crashes_in_a_row else 0.0
            # the supervisor's own kill of a hung worker is said as that, not as the signal's likely
            # cause (SIGKILL: "out of memory"), which sent an operator after the wrong fault
            how = "the supervisor's SIGKILL (hung)" if hung else ended(process.exitcode)
            log.error("worker %d (pid %s) ended with %s: starting a new one%s", i, process.pid, how,
                      f" in {delay:.1f}s ({worker.crashes_in_a_row} quick crashes in a row)" if delay else "")
            worker.respawn_at = now + delay
            if not delay:
                self.workers[i] = self._replace(sock, i, worker.crashes_in_a_row)
        return 0

    def _replace(self, sock: socket.socket, index: int, crashes_in_a_row: int) -> _Worker:
        worker = self._spawn(sock, index)
        worker.crashes_in_a_row, worker.replacement = crashes_in_a_row, True
        return worker

    def _stop_all(self) -> int:
        for worker in self.workers:
            if worker.process.is_alive() and worker.process.pid is not None:
                os.kill(worker.process.pid, signal.SIGTERM)  # each worker drains its accepted work
        code = 0
        for worker in self.workers:
            if worker.respawn_at is not None:  # died and was reported; its replacement never started
                continue
            process = worker.process
            process.join(self.settings.drain_timeout_s + 10)
            if process.is_alive():
                log.error("worker pid %s did not stop in time: killed", process.pid)
                process.kill()
                process.join()
            # one still starting (say, a replacement) had no work to drain: SIGTERM ends it at once
            stopped_while_starting = process.exitcode == -signal.SIGTERM and not worker.serving.is_set()
            if process.exitcode != 0 and not stopped_while_starting:
                log.error("worker pid %s ended with %s", process.pid, ended(process.exitcode))
                code = 1
            self._forget_metrics(process)
        log.info("all workers stopped")
        return code

    def _forget_metrics(self, process: BaseProcess) -> None:
        # a gone worker's live gauges (queue depth) must not linger in the sum
        if process.pid is not None and os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(process.pid)
