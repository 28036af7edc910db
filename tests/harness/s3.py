"""An S3 server on loopback (moto, pip-installed) for the embedded broker's S3 engine.

Tansu's S3 storage engine keeps topics, data and group offsets in a bucket, so they survive
a broker restart, even after SIGKILL (the memory engine loses everything). The server is a
``moto_server`` child process on a free loopback port, stopped by its pid.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from streamimg.broker import EmbeddedBroker, free_port, wait_for_port

# moto accepts any credentials; the broker and boto3 only need some.
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "streamimg", "AWS_SECRET_ACCESS_KEY": "streamimg",
               "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1"}


class MotoS3:
    """``moto_server`` on ``127.0.0.1:<free port>`` with one bucket; a context manager.

    ``env`` is what a client (the broker) needs to reach it: endpoint, credentials, region,
    ``AWS_ALLOW_HTTP=true``. :meth:`broker` makes an :class:`EmbeddedBroker` on the bucket.
    """

    def __init__(self, log_dir: Path, bucket: str = "streamimg"):
        self.log_path = log_dir / "moto.log"
        self.bucket = bucket
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.env = {**CREDENTIALS, "AWS_ENDPOINT": self.endpoint, "AWS_ALLOW_HTTP": "true"}
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> MotoS3:
        moto = Path(sys.executable).with_name("moto_server")
        cmd = [str(moto)] if moto.exists() else [sys.executable, "-m", "moto.server"]
        with open(self.log_path, "ab") as out:
            self.process = subprocess.Popen(
                [*cmd, "--host", "127.0.0.1", "--port", str(self.port)],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={**os.environ, **CREDENTIALS})
        try:
            wait_for_port("127.0.0.1", self.port, 30)
            self._create_bucket()
        except BaseException:
            self.stop()
            raise
        return self

    def _create_bucket(self) -> None:
        import boto3  # comes with moto[server]

        s3 = boto3.client("s3", endpoint_url=self.endpoint,
                          aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
                          region_name=CREDENTIALS["AWS_REGION"])
        s3.create_bucket(Bucket=self.bucket)

    def broker(self, port: int = 0, log_path: Path | None = None) -> EmbeddedBroker:
        """An (unstarted) embedded broker storing everything in this server's bucket."""
        return EmbeddedBroker(port=port, storage=f"s3://{self.bucket}/", log_path=log_path,
                              env=dict(self.env))

    def stop(self) -> None:
        proc, self.process = self.process, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)

    def __exit__(self, *exc) -> None:
        self.stop()
