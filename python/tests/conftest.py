"""Fixtures of the onboard package's tests: the real `onboard` CLI and a
real server over TLS on 127.0.0.1, both through the `onboard-suite`
binary's hidden `client` and `server` entry points (as tests/common does).

`ONBOARD_SUITE` names that binary (tests/python_package.rs sets it);
otherwise the workspace's target/debug/onboard-suite is used.
"""

import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def suite_binary() -> Path:
    path = Path(os.environ.get("ONBOARD_SUITE", REPO / "target" / "debug" / "onboard-suite"))
    if not path.is_file():
        pytest.fail(f"{path} is missing: run `cargo build` or set ONBOARD_SUITE")
    return path


@pytest.fixture(scope="session")
def suite() -> Path:
    return suite_binary()


def cli(suite: Path, *args: str, server: str = "https://127.0.0.1:1", ca=None, api_key: str = "") -> str:
    """Run `onboard ARGS…`, fail the test unless it succeeds, return stdout."""
    command = [str(suite), "client", "--server", server]
    if ca is not None:
        command += ["--ca", str(ca)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("ONBOARD_")}
    env["ONBOARD_API_KEY"] = api_key
    done = subprocess.run(command + list(args), env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"onboard {args} failed: {done.stderr}"
    return done.stdout


class Server:
    """A running onboard server with its own data directory."""

    def __init__(self, suite: Path, root: Path, settings: dict):
        self.suite = suite
        self.root = root
        data = root / "data"
        key_out = root / "admin.apikey"
        subprocess.run(
            [str(suite), "server", "init", "--dev-tls", "--data-dir", str(data), "--admin-key-out", str(key_out)],
            check=True,
            capture_output=True,
            timeout=120,
        )
        self.admin_key = key_out.read_text().strip()
        self.ca = data / "tls" / "ca.pem"
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith("ONBOARD_")}
        env.update({f"ONBOARD_{k}": v for k, v in settings.items()})
        self.log = open(root / "server.log", "wb")
        self.process = subprocess.Popen(
            [str(suite), "server", "serve", "--data-dir", str(data), "--listen", f"127.0.0.1:{port}"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=self.log,
        )
        self.url = f"https://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"the server did not start: {(root / 'server.log').read_text()}")

    def cli(self, api_key: str, *args: str) -> str:
        return cli(self.suite, *args, server=self.url, ca=self.ca, api_key=api_key)

    def create(self, role: str, name: str) -> str:
        """`admin ROLE create NAME`: the new API key."""
        return self.cli(self.admin_key, "admin", role, "create", name).strip().splitlines()[-1].strip()

    def key_file(self, api_key: str, name: str) -> Path:
        """The API key in a file of ours with mode 0600."""
        path = self.root / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(api_key + "\n")
        return path

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


@pytest.fixture(scope="module")
def server(suite, tmp_path_factory):
    # A small k so that a test graph of hundreds of persons has deliverable
    # and withheld segments.
    running = Server(suite, tmp_path_factory.mktemp("server"), {"K": "50", "MIN_JOB_ROWS": "50"})
    yield running
    running.stop()
