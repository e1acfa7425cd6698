"""A real Spark standalone cluster on 127.0.0.1 for the tests: one master, N workers, each a JVM
started with the classes that ship with pyspark (``spark-class ...deploy.master.Master`` and
``...deploy.worker.Worker``), and ``spark-submit`` against it.

Every process the cluster starts (master, workers, the executors the workers launch, their Python
workers, and the drivers of :meth:`StandaloneCluster.submit`) carries a marker in its environment,
so :meth:`StandaloneCluster.stop` finds and ends exactly those processes, and nothing else.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
MARKER_VAR = "CURATION_TEST_CLUSTER"
FAST_JVM = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def marked_pids(marker: str) -> list[int]:
    """Processes whose environment holds ``MARKER_VAR=marker`` (readable ones; not this one)."""
    needle = f"{MARKER_VAR}={marker}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def reap_marked(marker: str, tries: int = 50, grace: int = 0) -> None:
    """Wait for the processes marked with ``marker`` to exit, polling every 0.1 s up to
    ``tries`` times; after ``grace`` polls, SIGKILL those still there."""
    for attempt in range(tries):
        left = marked_pids(marker)
        if not left:
            return
        if attempt >= grace:
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        time.sleep(0.1)


def cmdline(pid: int) -> list[str]:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().decode().split("\0")
    except OSError:
        return []


def parent_pid(pid: int) -> int | None:
    try:
        stat = (Path("/proc") / str(pid) / "stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


@dataclass
class Worker:
    process: subprocess.Popen
    work_dir: Path
    webui_port: int
    log: Path


@dataclass
class StandaloneCluster:
    root: Path
    port: int
    webui_port: int
    marker: str
    env: dict[str, str]
    master: subprocess.Popen | None = None
    workers: list[Worker] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"spark://127.0.0.1:{self.port}"

    def state(self) -> dict:
        """The master's JSON status page (workers, applications)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.webui_port}/json/", timeout=5) as r:
            return json.load(r)

    def alive_workers(self) -> list[dict]:
        try:
            return [w for w in self.state().get("workers", []) if w.get("state") == "ALIVE"]
        except OSError:
            return []

    def executor_pids(self, worker: int) -> list[int]:
        """The executor JVMs (``CoarseGrainedExecutorBackend``) launched by worker ``worker``."""
        parent = self.workers[worker].process.pid
        return [
            pid
            for pid in marked_pids(self.marker)
            if parent_pid(pid) == parent
            and any("CoarseGrainedExecutorBackend" in part for part in cmdline(pid))
        ]

    def submit(
        self,
        script: Path,
        args: Sequence[str],
        *,
        conf: dict[str, str] | None = None,
        py_files: str | None = None,
        timeout: float = 120,
        background: bool = False,
    ) -> subprocess.CompletedProcess | subprocess.Popen:
        """``spark-submit --master spark://...`` of ``script`` (a job of ``jobs/``)."""
        command = [str(BIN / "spark-submit"), "--master", self.url]
        settings = {
            "spark.ui.enabled": "false",
            "spark.ui.showConsoleProgress": "false",
            "spark.driver.host": "127.0.0.1",
            "spark.driver.bindAddress": "127.0.0.1",
            "spark.driver.memory": "1g",
            "spark.executor.memory": "512m",
            "spark.local.dir": str(self.root / "driver-local"),
            "spark.sql.shuffle.partitions": "4",
            **(conf or {}),
        }
        for key, value in settings.items():
            command += ["--conf", f"{key}={value}"]
        if py_files:
            command += ["--py-files", py_files]
        command += [str(script), *args]
        if background:  # output to a file: a full pipe nobody reads would stall the driver
            with open(self.root / f"{script.stem}.out", "wb") as log:
                return subprocess.Popen(command, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        return subprocess.run(
            command, env=self.env, capture_output=True, text=True, timeout=timeout
        )

    def stop(self) -> None:
        """End every process of this cluster: daemons politely, then anything marked, by pid."""
        for proc in [w.process for w in self.workers] + ([self.master] if self.master else []):
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + 10
        for proc in [w.process for w in self.workers] + ([self.master] if self.master else []):
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        reap_marked(self.marker)


def _spawn(command: list[str], env: dict[str, str], log) -> subprocess.Popen:
    return subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)


def start_cluster(
    root: Path, workers: int = 2, cores: int = 1, memory: str = "1g", timeout: float = 90
) -> StandaloneCluster:
    """Start a master and ``workers`` workers on 127.0.0.1; wait until all are registered.

    On failure everything started so far is stopped and the logs are in the error.
    """
    root.mkdir(parents=True, exist_ok=True)
    (root / "driver-local").mkdir(exist_ok=True)
    marker = f"{os.getpid()}-{time.time_ns()}"
    env = {
        **os.environ,
        MARKER_VAR: marker,
        "SPARK_LOCAL_IP": "127.0.0.1",
        "SPARK_MASTER_HOST": "127.0.0.1",
        "PYSPARK_PYTHON": sys.executable,
        "PYSPARK_DRIVER_PYTHON": sys.executable,
        "PYTHONPATH": str(REPO),
        "SPARK_LOCAL_DIRS": str(root / "local"),
        "SPARK_LOG_DIR": str(root / "logs"),
        "SPARK_NO_DAEMONIZE": "1",
        # Every JVM here (launcher, master, workers, executors, drivers) lives for seconds: the
        # C1 compiler alone and the serial collector halve their start-up on a busy 2-core box.
        "JAVA_TOOL_OPTIONS": FAST_JVM,
    }
    env.pop("PYSPARK_GATEWAY_PORT", None)
    env.pop("PYSPARK_GATEWAY_SECRET", None)
    cluster = StandaloneCluster(root, free_port(), free_port(), marker, env)
    spark_class = str(BIN / "spark-class")
    try:
        with open(root / "master.log", "wb") as log:  # the child keeps its own descriptor
            cluster.master = _spawn(
                [
                    spark_class,
                    "org.apache.spark.deploy.master.Master",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(cluster.port),
                    "--webui-port",
                    str(cluster.webui_port),
                ],
                env,
                log,
            )
        for i in range(workers):
            work_dir = root / f"worker-{i}"
            (work_dir / "local").mkdir(parents=True, exist_ok=True)
            webui = free_port()
            log_path = root / f"worker-{i}.log"
            worker_env = {
                **env,
                "SPARK_WORKER_DIR": str(work_dir),
                "SPARK_LOCAL_DIRS": str(work_dir / "local"),
            }
            with open(log_path, "wb") as log:
                proc = _spawn(
                    [
                        spark_class,
                        "org.apache.spark.deploy.worker.Worker",
                        cluster.url,
                        "--cores",
                        str(cores),
                        "--memory",
                        memory,
                        "--host",
                        "127.0.0.1",
                        "--webui-port",
                        str(webui),
                        "--work-dir",
                        str(work_dir),
                    ],
                    worker_env,
                    log,
                )
            cluster.workers.append(Worker(proc, work_dir, webui, log_path))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            dead = [
                p
                for p in [cluster.master] + [w.process for w in cluster.workers]
                if p.poll() is not None
            ]
            if dead:
                raise RuntimeError(f"a cluster daemon exited early (code {dead[0].returncode})")
            if len(cluster.alive_workers()) == workers:
                return cluster
            time.sleep(0.5)
        raise RuntimeError(f"{workers} workers did not register with {cluster.url} in {timeout} s")
    except BaseException as exc:
        cluster.stop()
        logs = "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
            for p in sorted(root.glob("*.log"))
        )
        raise RuntimeError(f"could not start the standalone cluster: {exc}\n{logs}") from exc
