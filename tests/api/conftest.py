"""Starts a real `kiln-agent serve` on a free loopback port with a real model, for the API tests.

The binary is `target/release/kiln-agent` (scripts/test.sh builds it; override with KILN_AGENT_BIN), the
model `$KILN_CACHE/models/SmolLM2-135M-Instruct.Q4_1.gguf` (scripts/fetch-models.sh; override with
KILN_TEST_MODEL).
"""

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("KILN_CACHE", Path.home() / ".cache" / "kiln"))
MODEL = Path(os.environ.get("KILN_TEST_MODEL", CACHE / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"))
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
BIN = Path(os.environ.get("KILN_AGENT_BIN", TARGET / "release" / "kiln-agent"))
API_KEY = "test-key-123"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, parallel=2, queue=8, api_key=None, extra_args=(), model=MODEL, ctx=2048):
        if not BIN.exists():
            pytest.fail(f"{BIN} is missing: build it with `cargo build --release -p kiln-agent`")
        if not Path(model).exists():
            pytest.fail(f"{model} is missing: run scripts/fetch-models.sh")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.api_key = api_key
        args = [str(BIN), "serve", "--model", str(model), "--port", str(self.port),
                "--ctx", str(ctx), "--parallel", str(parallel), "--queue", str(queue),
                "--max-body-bytes", "1000000"]
        env = dict(os.environ)
        env.pop("KILN_API_KEY", None)
        if api_key:
            args += ["--api-key", api_key]
        args += list(extra_args)
        self.log = open(TARGET / f"kiln-serve-{self.port}.log", "w")
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.proc.poll() is not None:
                self.log.close()
                log = (TARGET / f"kiln-serve-{self.port}.log").read_text()
                raise RuntimeError(f"kiln-agent serve exited with {self.proc.returncode}:\n{log}")
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.proc.kill()
        raise RuntimeError("kiln-agent serve did not become ready in 120 s")

    def headers(self):
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=60)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            self.log.close()


@pytest.fixture(scope="session")
def server():
    s = Server()
    yield s
    assert s.stop() == 0, "kiln-agent serve must exit 0 on SIGTERM"


@pytest.fixture(scope="session")
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=server.url + "/v1", api_key="unused", timeout=120, max_retries=0)


@pytest.fixture(scope="session")
def model_id(client):
    return client.models.list().data[0].id
