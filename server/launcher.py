"""Start run_triton.sh on free loopback ports and stop it by its process group.

Used by the demo, the tests and the benchmark, so every server a script starts binds
127.0.0.1, is found by its own process id, and never outlives its owner.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import tempfile
import time
from contextlib import ExitStack, closing
from pathlib import Path

from server.processes import live_members, processes, remove_shm_regions

ROOT = Path(__file__).resolve().parent.parent
RUN_TRITON = ROOT / "run_triton.sh"
READY_LINE = "run_triton.sh: ready"


def free_ports(count: int) -> list[int]:
    """Pick ``count`` free ports on 127.0.0.1, all held open together so they differ."""
    with ExitStack() as stack:
        socks = [stack.enter_context(closing(socket.socket())) for _ in range(count)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


class ServerFailed(RuntimeError):
    """The server exited or was not ready in time; the message holds its log's tail."""


class TritonServer:
    """Run one server on free loopback ports: ``with TritonServer(repository) as server: ...``.

    Args:
        repository: the model repository.
        mode: run_triton.sh's --mode (embedded here; container where a GPU and Docker are).
        log: where the server's output goes (a temporary file by default; ``log_text()``).
        ready_timeout: seconds run_triton.sh waits for the server to be ready.
        extra_args: more run_triton.sh arguments.
    """

    def __init__(self, repository: Path, mode: str = "embedded", log: Path | None = None,
                 ready_timeout: float = 600, extra_args: tuple[str, ...] = ()):
        self.repository = Path(repository)
        self.mode = mode
        self.ready_timeout = ready_timeout
        self.extra_args = tuple(extra_args)
        self._own_log = log is None
        self.log_path = Path(log) if log else Path(tempfile.mkstemp(prefix="triton-", suffix=".log")[1])
        self.process: subprocess.Popen | None = None
        self.http_port = self.grpc_port = self.metrics_port = 0

    @property
    def http_url(self) -> str:
        """host:port of the HTTP endpoint."""
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        """host:port of the gRPC endpoint."""
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        """The URL of the Prometheus metrics."""
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    @property
    def pid(self) -> int | None:
        """run_triton.sh's pid, or None when not running."""
        return self.process.pid if self.process else None

    @property
    def tritonserver_pid(self) -> int | None:
        """The tritonserver process (run_triton.sh's child), from its ready line."""
        match = re.search(rf"{READY_LINE} .* pid=(\d+)", self.log_text())
        return int(match.group(1)) if match else None

    def processes(self) -> list[dict]:
        """Read what each live process of this server uses now (server.processes.processes)."""
        return processes(self.pid, self.tritonserver_pid) if self.pid is not None else []

    def log_text(self) -> str:
        """The server's output so far ("" before it starts)."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def start(self, attempts: int = 3) -> "TritonServer":
        """Start the server and wait until it is ready; nothing is left running on failure.

        Args:
            attempts: tries with fresh ports when a port was taken meanwhile.

        Raises:
            ServerFailed: the server exited, or was not ready in time.
        """
        try:
            return self._start(attempts)
        except BaseException:  # Ctrl-C or a failure while waiting: leave nothing running
            self.stop()
            raise

    def _start(self, attempts: int) -> "TritonServer":
        for attempt in range(attempts):
            self.http_port, self.grpc_port, self.metrics_port = free_ports(3)
            try:
                self._start_once()
                return self
            except ServerFailed as e:
                # Another process may have taken a port between our check and the
                # server's bind; anything else is a real failure.
                if "address already in use" not in str(e).lower() or attempt == attempts - 1:
                    raise
        raise AssertionError("unreachable")

    def _start_once(self) -> None:
        command = [str(RUN_TRITON), "--mode", self.mode, "--repository", str(self.repository),
                   "--address", "127.0.0.1", "--http-port", str(self.http_port),
                   "--grpc-port", str(self.grpc_port), "--metrics-port", str(self.metrics_port),
                   "--ready-timeout", str(int(self.ready_timeout)), *self.extra_args]
        with open(self.log_path, "wb") as log:
            # Its own session: stop() signals the whole group (script, server, stubs).
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + self.ready_timeout + 30
        while time.monotonic() < deadline:
            if READY_LINE in self.log_text():
                return
            rc = self.process.poll()
            if rc is not None:
                self.process = None
                raise ServerFailed(f"run_triton.sh exited with status {rc}; log "
                                   f"{self.log_path}:\n{self.log_text()[-4000:]}")
            time.sleep(0.5)
        self.stop()
        raise ServerFailed(f"server not ready after {self.ready_timeout}s; log {self.log_path}")

    def stop(self, timeout: float = 60) -> None:
        """Stop the server and everything it started.

        SIGTERM goes to run_triton.sh alone: it forwards it to tritonserver, which unloads
        the models (their finalize runs) and ends its Python stubs itself. Signalling the
        whole group would kill the stubs under the server. Whatever is left of the group
        after ``timeout`` (or after a clean exit) gets SIGKILL."""
        process, self.process = self.process, None
        if process is None:
            return
        pgid = os.getpgid(process.pid) if process.poll() is None else process.pid
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait()
        # A stub may still be dying when the server has exited; return when none lives.
        deadline = time.monotonic() + 10
        while live_members(pgid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if not live_members(pgid):
            remove_shm_regions(process.pid)

    def __enter__(self) -> "TritonServer":
        return self.start()

    @property
    def exited(self) -> bool:
        """Whether run_triton.sh has exited on its own: started, not stopped, gone."""
        return self.process is not None and self.process.poll() is not None

    def __exit__(self, *exc) -> None:
        exited = self.exited
        self.stop()
        # A server that died under its user: its log is the only account of why.
        if self._own_log and exc[0] is None and not exited:
            self.log_path.unlink(missing_ok=True)
