"""The index database's disaster recovery as docker/ sets it up: a primary that archives its WAL and
streams to a standby, and the failover the README describes.

The scripts and server settings are taken from docker/ and run here with the
machine's own PostgreSQL binaries, as the postgres user: a primary and a
standby on free ports in a folder of the test.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import free_port

DOCKER = Path(__file__).resolve().parents[2] / "docker"
PASSWORD = "standby-test-password"


def _bin_dir() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return found[-1].parent if found else None


BIN = _bin_dir()
pytestmark = pytest.mark.skipif(
    BIN is None or os.geteuid() != 0,
    reason="needs PostgreSQL's server binaries (apt-get install postgresql) and root to run them as postgres",
)


def as_postgres(*args: str, env: dict[str, str] | None = None, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["runuser", "-u", "postgres", "--", *args],
        env={**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        **kwargs,
    )


def primary_settings(archive: Path) -> list[str]:
    """The primary's server options from docker/compose.yaml, its WAL archive moved into the test's folder."""
    command = yaml.safe_load((DOCKER / "compose.yaml").read_text())["services"]["db"]["command"]
    assert command[0] == "postgres"
    return [option.replace("/wal-archive", str(archive)) for option in command[1:]]


def sql(port: int, folder: Path, statement: str, database: str = "pacs") -> str:
    return as_postgres(
        "psql", "-h", str(folder), "-p", str(port), "-U", "pacs", "-d", database, "-XtA", "-c", statement
    ).stdout.strip()


def wait_for(check, seconds: float = 30.0):
    deadline = time.monotonic() + seconds
    while True:
        try:
            result = check()
            if result:
                return result
        except subprocess.CalledProcessError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.2)


@pytest.fixture
def folder():
    # The postgres user cannot enter pytest's root-only temporary folders.
    path = Path(tempfile.mkdtemp(prefix="pacs-standby-", dir="/tmp"))
    shutil.chown(path, "postgres", "postgres")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_the_standby_follows_the_primary_and_takes_over_when_it_is_lost(folder):
    primary_data, standby_data, archive = folder / "primary", folder / "standby", folder / "wal-archive"
    archive.mkdir()
    shutil.chown(archive, "postgres", "postgres")
    primary_port, standby_port = free_port(), free_port()
    socket_options = ["-c", f"unix_socket_directories={folder}", "-c", "listen_addresses=127.0.0.1"]

    # The primary as the image's first start makes it: initdb, then the init scripts, then the server.
    (folder / "pw").write_text("primary-password\n")
    shutil.chown(folder / "pw", "postgres", "postgres")
    as_postgres("initdb", "-D", str(primary_data), "-U", "pacs", "--pwfile", str(folder / "pw"),
                "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8")  # fmt: skip
    init = {"PGDATA": str(primary_data), "POSTGRES_USER": "pacs", "POSTGRES_DB": "postgres",
            "REPLICATION_PASSWORD": PASSWORD, "PGHOST": str(folder), "PGPORT": str(primary_port)}  # fmt: skip
    as_postgres("pg_ctl", "-D", str(primary_data), "-w", "-l", str(folder / "init.log"), "-o", f"-p {primary_port} -k {folder} -c listen_addresses=",
                "start", env={"LC_ALL": "C"})  # fmt: skip
    as_postgres("sh", str(DOCKER / "postgres" / "primary-init.sh"), env=init)
    as_postgres("pg_ctl", "-D", str(primary_data), "-w", "stop")
    primary = subprocess.Popen(
        [
            "runuser",
            "-u",
            "postgres",
            "--",
            f"{BIN}/postgres",
            "-D",
            str(primary_data),
            "-p",
            str(primary_port),
            *socket_options,
            *primary_settings(archive),
        ],  # fmt: skip
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    standby = None
    try:
        wait_for(lambda: sql(primary_port, folder, "SELECT 1", "postgres"))
        sql(primary_port, folder, "CREATE DATABASE pacs", "postgres")
        sql(primary_port, folder, "CREATE TABLE patient (name text); INSERT INTO patient VALUES ('张三')")

        # The standby's entrypoint, as compose runs it: a base backup, then a hot standby that follows.
        env = {"PGDATA": str(standby_data), "PRIMARY_HOST": "127.0.0.1", "PRIMARY_PORT": str(primary_port),
               "REPLICATION_PASSWORD": PASSWORD, "PATH": f"{BIN}:{os.environ['PATH']}"}  # fmt: skip
        standby = subprocess.Popen(
            [
                "runuser",
                "-u",
                "postgres",
                "--",
                "env",
                *(f"{k}={v}" for k, v in env.items()),
                "sh",
                str(DOCKER / "postgres" / "standby.sh"),
                "-p",
                str(standby_port),
                *socket_options,
                "-c",
                "hot_standby=on",
            ],  # fmt: skip
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        assert wait_for(lambda: sql(standby_port, folder, "SELECT name FROM patient")) == "张三"
        assert sql(standby_port, folder, "SELECT pg_is_in_recovery()") == "t"
        assert wait_for(lambda: sql(primary_port, folder, "SELECT state FROM pg_stat_replication")) == "streaming"
        sql(primary_port, folder, "INSERT INTO patient VALUES ('李四')")
        assert wait_for(lambda: sql(standby_port, folder, "SELECT count(*) FROM patient") == "2")

        # WAL segments reach the archive (point-in-time recovery from a base backup and the archive).
        sql(primary_port, folder, "SELECT pg_switch_wal()")
        assert wait_for(lambda: [p for p in archive.iterdir() if len(p.name) == 24])

        # The primary is lost; the standby is promoted (README) and takes writes with nothing lost.
        primary.kill()
        primary.wait(timeout=10)
        assert sql(standby_port, folder, "SELECT pg_promote()") == "t"
        assert wait_for(lambda: sql(standby_port, folder, "SELECT NOT pg_is_in_recovery()") == "t")
        sql(standby_port, folder, "INSERT INTO patient VALUES ('王五')")
        assert sql(standby_port, folder, "SELECT string_agg(name, ',' ORDER BY name) FROM patient") == (
            ",".join(sorted(["张三", "李四", "王五"]))
        )
    finally:
        for process in (standby, primary):
            if process is not None and process.poll() is None:
                process.terminate()
                process.wait(timeout=20)
