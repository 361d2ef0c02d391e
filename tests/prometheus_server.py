"""A real Prometheus server for end-to-end tests: start, query, wait, stop.

>>> with PrometheusServer({"meshstats": "127.0.0.1:15090"}, tmp_path) as prom:  # doctest: +SKIP
...     prom.query('up{job="meshstats"}')[0]["value"][1]
'1'

Runs Debian's ``prometheus`` binary on 127.0.0.1 with a free port, a generated config (one
scrape job per target, ``scrape_interval`` 1s, metrics path ``/stats/prometheus``) and its
TSDB under the given directory. :meth:`PrometheusServer.start` returns only when the server
is ready and every target is ``up``; if that does not happen within ``ready_timeout`` it
raises :class:`PrometheusError` with the target states and the tail of Prometheus' own log.
The process is always stopped with SIGTERM (SIGKILL after ``stop_timeout``), also when
starting fails.

Nothing here knows about meshstats: a target is any ``host:port`` answering Prometheus
scrapes, so the same helper serves in-process ``MetricsServer`` instances today and real
sidecars later.

Timing, measured on the 2-core test VM with Prometheus 2.42: ``/-/ready`` after about 0.1 s,
but the first scrape only after 5-6 s, whatever ``scrape_interval`` says (the scrape manager
applies discovered targets on a 5 s tick). Waits poll every 50 ms; no fixed sleeps.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

__all__ = ["PrometheusError", "PrometheusServer", "Result", "Target", "free_port"]

#: What one entry of an instant-query or range-query ``result`` looks like (Prometheus' JSON).
Result = dict[str, Any]

_POLL = 0.05  # seconds between polls: short, since every wait here is for a 1 s scrape cycle


class PrometheusError(AssertionError):
    """Prometheus did not start, a target stayed down, a query failed or a wait timed out.

    An ``AssertionError`` so that pytest reports it as a test failure with the message
    (which carries Prometheus' log tail), not as an error in the harness.
    """


@dataclass(frozen=True)
class Target:
    """One scrape job: ``job`` label, ``host:port`` and the path Prometheus GETs."""

    job: str
    address: str
    metrics_path: str = "/stats/prometheus"


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now (the caller retries if it is taken meanwhile)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _as_targets(targets: Mapping[str, str] | Iterable[Target]) -> list[Target]:
    if isinstance(targets, Mapping):
        return [Target(job, address) for job, address in targets.items()]
    return list(targets)


class PrometheusServer:
    """Debian's ``prometheus`` scraping ``targets`` every ``scrape_interval``.

    >>> prom = PrometheusServer([Target("a", "127.0.0.1:9901")], tmp_path)  # doctest: +SKIP
    >>> prom.start()  # waits for /-/ready and for every target to be up
    >>> prom.wait_for('sum(x_total{job="a"})', lambda r: r and float(r[0]["value"][1]) >= 3)
    >>> prom.stop()

    Parameters
    ----------
    targets
        ``{job: "host:port"}`` or :class:`Target` entries (for another metrics path); the
        ``job`` label tells the targets apart in queries.
    workdir
        Where the config, the TSDB and the log go (pytest's ``tmp_path``).
    scrape_interval
        Prometheus duration string; also used as ``evaluation_interval``.
    ready_timeout
        Bound on the whole start: process ready and every target ``up``.
    targets_timeout
        When given, the wait for the targets has its own bound, counted from the moment the
        server is ready (so a slow start on a loaded machine does not eat into it).
    """

    def __init__(
        self,
        targets: Mapping[str, str] | Iterable[Target],
        workdir: str | os.PathLike[str],
        *,
        scrape_interval: str = "1s",
        ready_timeout: float = 60.0,
        targets_timeout: float | None = None,
        stop_timeout: float = 10.0,
        binary: str = "prometheus",
    ) -> None:
        self.targets = _as_targets(targets)
        if not self.targets:
            raise ValueError("targets: at least one scrape target is needed")
        jobs = [t.job for t in self.targets]
        if len(set(jobs)) != len(jobs):
            raise ValueError(f"targets: job names must be unique, got {jobs}")
        self.workdir = Path(workdir)
        self.scrape_interval = scrape_interval
        self.ready_timeout = ready_timeout
        self.targets_timeout = targets_timeout
        self.stop_timeout = stop_timeout
        found = shutil.which(binary)
        if found is None:
            raise PrometheusError(
                f"{binary!r} not found on PATH: apt-get install -y prometheus (Debian)"
            )
        self.binary = found
        self.port = 0
        self.pid: int | None = None  # of the last process started (for tests of cleanup)
        self.log_path = self.workdir / "prometheus.log"
        self.config_path = self.workdir / "prometheus.yml"
        self._process: subprocess.Popen[bytes] | None = None
        self._log_file: Any = None

    # -- lifecycle --------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _write_config(self) -> None:
        # JSON is YAML: no yaml dependency, and no quoting surprises in job names.
        config = {
            "global": {
                "scrape_interval": self.scrape_interval,
                "evaluation_interval": self.scrape_interval,
                "scrape_timeout": self.scrape_interval,
            },
            "scrape_configs": [
                {
                    "job_name": t.job,
                    "metrics_path": t.metrics_path,
                    "static_configs": [{"targets": [t.address]}],
                }
                for t in self.targets
            ],
        }
        self.config_path.write_text(json.dumps(config, indent=2), encoding="utf-8")

    def _spawn(self) -> None:
        self.port = free_port()
        data = self.workdir / f"data-{self.port}"
        self._log_file = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self._process = subprocess.Popen(
            [
                self.binary,
                f"--config.file={self.config_path}",
                f"--storage.tsdb.path={data}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=info",  # the log is read only on failure; info says why
            ],
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
        )
        self.pid = self._process.pid

    def start(self) -> PrometheusServer:
        """Start and wait until ready with every target up (or raise, with the process gone)."""
        if self._process is not None:
            raise RuntimeError("PrometheusServer is already running")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._write_config()
        deadline = time.monotonic() + self.ready_timeout
        try:
            for attempt in range(3):  # the free port may be taken between probe and bind
                self._spawn()
                if self._wait_ready(deadline):
                    break
                if attempt == 2 or "address already in use" not in self.log_tail():
                    raise PrometheusError(self._failure("did not become ready"))
                self.stop()
            if self.targets_timeout is not None:
                deadline = time.monotonic() + self.targets_timeout
            self._wait_targets_up(deadline)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, deadline: float) -> bool:
        """True once /-/ready answers 200; False if the process exited first."""
        assert self._process is not None
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                return False
            try:
                with urllib.request.urlopen(self.url + "/-/ready", timeout=1) as response:
                    if response.status == 200:
                        return True
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(_POLL)
        raise PrometheusError(self._failure(f"not ready within {self.ready_timeout:g} s"))

    def _wait_targets_up(self, deadline: float) -> None:
        want = {t.job for t in self.targets}
        states: dict[str, str] = {}
        while time.monotonic() < deadline:
            states = {t["labels"]["job"]: t["health"] for t in self.active_targets()}
            if all(states.get(job) == "up" for job in want):
                return
            if self._process is not None and self._process.poll() is not None:
                break
            time.sleep(_POLL)
        detail = "; ".join(
            f"{t['labels']['job']}={t['health']} {t.get('lastError') or ''}".strip()
            for t in self.active_targets_or_empty()
        )
        raise PrometheusError(
            self._failure(
                f"targets not all up within {self._targets_bound():g} s: "
                f"{detail or 'no active targets'} (want {sorted(want)})"
            )
        )

    def _targets_bound(self) -> float:
        return self.ready_timeout if self.targets_timeout is None else self.targets_timeout

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after ``stop_timeout``; returns the exit code (safe twice)."""
        process, self._process = self._process, None
        code = None
        if process is not None:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(self.stop_timeout)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(self.stop_timeout)
            code = process.returncode
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        return code

    def __enter__(self) -> PrometheusServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- diagnostics --------------------------------------------------------------------------

    def log_tail(self, lines: int = 30) -> str:
        """The last ``lines`` lines Prometheus wrote (its stdout and stderr)."""
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def _failure(self, what: str) -> str:
        code = None if self._process is None else self._process.poll()
        state = "running" if code is None else f"exited with {code}"
        return (
            f"prometheus ({self.binary}, {self.url}, {state}) {what}\n"
            f"config: {self.config_path}\n--- prometheus log tail ---\n{self.log_tail()}"
        )

    # -- HTTP API -----------------------------------------------------------------------------

    def api(self, path: str, params: Mapping[str, str] | None = None) -> Any:
        """GET an HTTP API path (``/api/v1/...``) and return its ``data``; raise on errors."""
        url = self.url + path
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                payload = json.load(response)
        except urllib.error.HTTPError as exc:  # 400/422 carry the PromQL error as JSON
            body = exc.read().decode("utf-8", "replace")
            raise PrometheusError(f"GET {path} {dict(params or {})}: {exc.code} {body}") from exc
        if payload.get("status") != "success":
            raise PrometheusError(f"GET {path} {dict(params or {})}: {payload}")
        return payload["data"]

    def active_targets(self) -> list[Result]:
        """``/api/v1/targets`` active targets (``labels``, ``health``, ``lastError``, ...)."""
        return list(self.api("/api/v1/targets", {"state": "active"})["activeTargets"])

    def active_targets_or_empty(self) -> list[Result]:
        try:
            return self.active_targets()
        except (PrometheusError, OSError):
            return []

    def query(self, promql: str, time: float | None = None) -> list[Result]:
        """Evaluate ``promql`` (at ``time``, Unix seconds, else now): the ``result`` list.

        Vectors and matrices come back as Prometheus gives them (``metric`` plus
        ``value`` or ``values``); a scalar or string becomes a one-entry list
        ``[{"metric": {}, "value": [t, "v"]}]`` so callers read every kind alike.
        """
        params = {"query": promql}
        if time is not None:
            params["time"] = f"{time:.3f}"
        data = self.api("/api/v1/query", params)
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        return list(data["result"])

    def wait_for(
        self,
        promql: str,
        predicate: Callable[[list[Result]], bool],
        timeout: float = 60.0,
    ) -> list[Result]:
        """Poll ``promql`` until ``predicate(result)`` holds; return that result.

        The bound is generous on purpose: this waits for an event (a scrape that has
        happened), and on a loaded 2-core machine Prometheus' first scrape alone can take
        many seconds; a healthy run returns as soon as the predicate holds.

        Raises :class:`PrometheusError` with the last result and the log tail on timeout.
        """
        deadline = time.monotonic() + timeout
        result: list[Result] = []
        while True:
            result = self.query(promql)
            if predicate(result):
                return result
            if time.monotonic() >= deadline:
                raise PrometheusError(
                    self._failure(
                        f"wait_for timed out after {timeout:g} s: {promql}\n"
                        f"last result: {json.dumps(result)[:2000]}"
                    )
                )
            time.sleep(_POLL)
