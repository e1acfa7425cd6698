"""One ``/proc`` monitor for the benchmarks: peak RSS and CPU time per process kind, and the
machine's contention over a window (Linux only)."""

from __future__ import annotations

import logging
import os
import threading
import time

log = logging.getLogger("bench")


def _status_kib(pid: int) -> dict[str, int]:
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    name, value = line.split(":", 1)
                    out[name] = int(value.split()[0])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return out


CLK_TCK = os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """CPU seconds all processes of the machine spent busy since boot (``/proc/stat``)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / CLK_TCK


class CpuWindow:
    """Wall time, this process's CPU time and the whole machine's busy CPU time over a window.

    ``others_share`` is the share of the machine's cores that *other* processes kept busy meanwhile:
    the contention under which a number was measured (0 on an idle machine).
    """

    def __init__(self) -> None:
        self.wall0 = time.perf_counter()
        self.cpu0 = time.process_time()
        self.busy0 = machine_busy_seconds()

    def result(self, own_cpu: float | None = None) -> dict:
        wall = time.perf_counter() - self.wall0
        own = time.process_time() - self.cpu0 if own_cpu is None else own_cpu
        busy = machine_busy_seconds() - self.busy0
        ncpu = os.cpu_count() or 1
        return {
            "wall_seconds": round(wall, 2),
            "own_cpu_seconds": round(own, 2),
            "machine_busy_cpu_seconds": round(busy, 2),
            "others_share_of_machine": round(max(0.0, busy - own) / (wall * ncpu), 3),
        }


class ProcessMonitor(threading.Thread):
    """Polls ``/proc`` for this process and its descendants: peak RSS and CPU time per kind.

    Kinds: ``driver`` (this process), ``jvm`` (java), ``daemon`` (``pyspark.daemon``, started by the
    JVM), ``worker`` (a Python worker: cmdline holds ``pyspark.daemon`` or ``pyspark/worker`` and its
    parent is the daemon), ``other``. Peaks are the max of sampled VmRSS and of VmHWM.
    Only descendants are watched, so other users' Spark processes on the machine are not counted.
    The polling thread's own CPU time (~1.6 ms a sample) is taken off the driver's.
    """

    def __init__(self, interval: float = 0.2) -> None:
        super().__init__(daemon=True, name="rss-monitor")
        self.interval = interval
        self.root = os.getpid()
        self._halt = threading.Event()
        self._lock = threading.Lock()
        self._thread_cpu = 0.0  # the polling thread's own CPU time (it runs in the driver)
        self.begin()

    def begin(self) -> None:
        """Start a measurement window (peaks and CPU times are counted from here)."""
        with self._lock:
            self.peaks: dict[tuple[int, str], dict] = {}
            self.max_workers_total_kib = 0
            self.max_workers_alive = 0
            self.samples = 0
            self._cpu_base: dict[tuple[int, str], int] = {}
            self._cpu_last: dict[tuple[int, str], int] = {}
            self._window = CpuWindow()
            self._thread_cpu_base = self._thread_cpu
        self.sample(baseline=True)

    def stop(self) -> None:
        self._halt.set()
        self.join()

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                self.sample()
            except Exception as exc:  # a monitor must never kill the benchmark
                log.debug("monitor: %s", exc)
            self._thread_cpu = time.thread_time()
            self._halt.wait(self.interval)

    @staticmethod
    def _stats() -> dict[int, tuple[int, str, int]]:
        """pid -> (ppid, starttime, utime + stime ticks) for every process of the machine."""
        out: dict[int, tuple[int, str, int]] = {}
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                with open(f"/proc/{name}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            out[int(name)] = (int(fields[1]), fields[19], int(fields[11]) + int(fields[12]))
        return out

    @staticmethod
    def _cmdline(pid: int) -> str:
        # Read every time: spark-submit's shell script execs java in the same pid.
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                return f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            return ""

    def sample(self, baseline: bool = False) -> None:
        stats = self._stats()
        children: dict[int, list[int]] = {}
        for pid, (ppid, _, _) in stats.items():
            children.setdefault(ppid, []).append(pid)
        stack, tree = [self.root], [self.root]
        while stack:
            for child in children.get(stack.pop(), []):
                tree.append(child)
                stack.append(child)
        workers_total = workers_alive = 0
        with self._lock:
            self.samples += 1
            for pid in tree:
                if pid not in stats:
                    continue
                ppid, start, ticks = stats[pid]
                key = (pid, start)
                cmd = self._cmdline(pid)
                if pid == self.root:
                    kind = "driver"
                elif "pyspark.daemon" in cmd or "pyspark/worker" in cmd or "pyspark.worker" in cmd:
                    parent = self._cmdline(ppid)
                    kind = "worker" if "pyspark.daemon" in parent else "daemon"
                elif cmd.split(" ", 1)[0].endswith("java"):
                    kind = "jvm"
                else:
                    kind = "other"
                if baseline:
                    self._cpu_base[key] = ticks
                self._cpu_last[key] = ticks
                st = _status_kib(pid)
                if not st:
                    continue
                peak = self.peaks.setdefault(key, {"kind": kind, "rss_kib": 0, "hwm_kib": 0})
                peak["kind"] = kind
                peak["rss_kib"] = max(peak["rss_kib"], st.get("VmRSS", 0))
                peak["hwm_kib"] = max(peak["hwm_kib"], st.get("VmHWM", 0))
                if kind == "worker":
                    workers_total += st.get("VmRSS", 0)
                    workers_alive += 1
            self.max_workers_total_kib = max(self.max_workers_total_kib, workers_total)
            self.max_workers_alive = max(self.max_workers_alive, workers_alive)

    def end(self) -> dict:
        """Close the window: peaks per kind, CPU seconds per kind, and the machine's contention."""
        self.sample()
        with self._lock:
            by_kind: dict[str, dict] = {}
            for key, p in self.peaks.items():
                k = by_kind.setdefault(
                    p["kind"],
                    {"processes": 0, "peak_rss_mib": 0.0, "peak_hwm_mib": 0.0, "cpu_seconds": 0.0},
                )
                k["processes"] += 1
                k["peak_rss_mib"] = round(max(k["peak_rss_mib"], p["rss_kib"] / 1024), 1)
                k["peak_hwm_mib"] = round(max(k["peak_hwm_mib"], p["hwm_kib"] / 1024), 1)
                used = self._cpu_last.get(key, 0) - self._cpu_base.get(key, 0)
                k["cpu_seconds"] = round(k["cpu_seconds"] + used / CLK_TCK, 2)
            # The polling itself runs in the driver process: not the measured work.
            monitor_cpu = max(0.0, self._thread_cpu - self._thread_cpu_base)
            if "driver" in by_kind:
                driver = by_kind["driver"]
                driver["cpu_seconds"] = round(max(0.0, driver["cpu_seconds"] - monitor_cpu), 2)
            own = sum(k["cpu_seconds"] for k in by_kind.values())
            return {
                "samples": self.samples,
                "by_kind": by_kind,
                "max_workers_alive": self.max_workers_alive,
                "max_workers_total_rss_mib": round(self.max_workers_total_kib / 1024, 1),
                "monitor_cpu_seconds": round(monitor_cpu, 2),
                "cpu": self._window.result(own_cpu=own),
            }


def rss_mib() -> float:
    return _status_kib(os.getpid()).get("VmRSS", 0) / 1024
