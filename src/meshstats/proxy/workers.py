"""A sidecar served by several processes (``workers: N``), one store and one admin port.

The supervisor (``meshstats sidecar`` with ``workers`` above 1) opens the shared store,
serves it on the admin port, sweeps it for idle series (one sweeper, however many
processes record), and starts N worker processes. Each worker runs the whole sidecar but
the admin port, binding every listener port with ``SO_REUSEPORT`` so that the kernel
spreads new connections over them, and records into the shared store. A worker that dies
is replaced; SIGINT or SIGTERM stops them all.

    supervisor = Supervisor(config, "sidecar.yaml")
    supervisor.start()          # raises WorkerError if a worker cannot start
    supervisor.run(duration)    # until a signal (or duration), replacing dead workers
"""

from __future__ import annotations

import dataclasses
import os
import queue
import signal
import subprocess
import sys
import threading

from .._messages import shared_store_path
from .._store import Store
from ..engine import StatsEngine
from ..exposition import MetricsServer
from .config import SidecarConfig
from .sidecar import _stats_config, admin_server, shared_store

__all__ = ["Supervisor", "WorkerError", "worker_config"]


class WorkerError(RuntimeError):
    """A worker process could not start (its own error went to stderr)."""


def worker_config(config: SidecarConfig, store: str) -> SidecarConfig:
    """What each worker runs: every listener, no admin port, the shared store."""
    return dataclasses.replace(config, admin_port=None, workers=1, store=store)


class Supervisor:
    def __init__(self, config: SidecarConfig, config_path: str) -> None:
        self.config = config
        self.config_path = config_path
        self.own_store = config.store is None
        self.store_path = shared_store_path(
            config.store or f"meshstats-sidecar-{os.getpid()}.store"
        )
        stats = _stats_config(config)
        store = shared_store(dataclasses.replace(config, store=self.store_path), stats)
        assert store is not None
        self.store: Store = store
        # Registers the metrics and keeps istio_build visible; sweeps idle series.
        self.engine = StatsEngine(config.node, stats, store=self.store)
        self.admin: MetricsServer | None = None
        self.workers: list[subprocess.Popen[bytes]] = []
        self.replaced = 0
        self._events: queue.Queue[tuple[str, subprocess.Popen[bytes] | None]] = queue.Queue()

    def _spawn(self) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "meshstats", "sidecar", "--config", self.config_path,
             "--worker-of", self.store_path],
            stdout=subprocess.PIPE,
        )  # fmt: skip
        assert proc.stdout is not None
        line = proc.stdout.readline()
        proc.stdout.close()
        if line.strip() != b"ready":
            proc.wait()
            raise WorkerError(f"a worker exited with status {proc.returncode} before serving")
        threading.Thread(target=self._watch, args=(proc,), daemon=True).start()
        return proc

    def _watch(self, proc: subprocess.Popen[bytes]) -> None:
        proc.wait()
        self._events.put(("exited", proc))

    def start(self) -> Supervisor:
        config = self.config
        try:
            if config.admin_port is not None:
                self.admin = admin_server(config, self.store).start()
            for _ in range(config.workers):
                self.workers.append(self._spawn())
            self.engine.start_reporting()
        except BaseException:
            self.stop()
            raise
        return self

    def run(self, duration: float | None = None) -> None:
        """Serve until SIGINT/SIGTERM or ``duration`` seconds, replacing dead workers."""
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: self._events.put(("stop", None)))
        timer = None
        if duration is not None:
            timer = threading.Timer(duration, self._events.put, (("stop", None),))
            timer.daemon = True
            timer.start()
        try:
            while True:
                event, proc = self._events.get()
                if event == "stop":
                    return
                if proc in self.workers:
                    print(
                        f"meshstats sidecar: worker {proc.pid} exited with status "
                        f"{proc.returncode}; starting another",
                        file=sys.stderr,
                        flush=True,
                    )
                    self.workers.remove(proc)
                    self.workers.append(self._spawn())
                    self.replaced += 1
        finally:
            if timer is not None:
                timer.cancel()

    def stop(self) -> None:
        workers, self.workers = self.workers, []
        for proc in workers:
            if proc.poll() is None:
                proc.terminate()
        for proc in workers:
            proc.wait()
        if self.admin is not None:
            self.admin.stop()
            self.admin = None
        self.engine.stop_reporting()
        if self.own_store:
            try:
                os.unlink(self.store_path)
            except FileNotFoundError:
                pass
