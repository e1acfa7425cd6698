"""Benchmark of ``rake`` on a synthetic pool: driver path vs Spark path.

Run with ``make bench-balance`` (``ARGS="--samples 1000000 --entries 50000"`` for a quick check) or
``.venv/bin/python bench/bench_balance.py --help``. Not a test: it prints a table and writes
``<workdir>/results-<data key>.json``; nothing is asserted. Wall times on a shared machine are
provisional: the load average before and after each run is recorded next to the numbers.

What it does:

1. Generates (seeded, vectorised, cached in ``<workdir>/data/<key>/``) the distinct-signature
   table of a synthetic pool with ``--samples`` samples and ``--entries`` metadata entries
   (:func:`curation.balancing.synthetic.synthetic_table`: Zipf entry frequencies, 1 + Poisson(k̄ − 1)
   entries per signature, Zipf(2.5) multiplicities capped at 1000; the number of signatures is
   chosen so that Σ multiplicity ≈ ``--samples``) and writes it as Parquet in the ``count``
   stage's layout (``signatures/``: ``entry_ids`` list<int32>, ``multiplicity`` int64), in
   ``--files`` files, with the table's facts in ``meta.json`` beside it.
2. Runs ``rake`` on each path, each in a fresh process, on the problems of ``--problems``:
   ``capped`` — τ_j = min(c_j, ``--cap``) with rake's ``l1`` objective (no fixed rows, the
   problem the SciPy reference and earlier versions solve), infeasible on Zipf data (it ends ``stalled`` or
   ``infeasible``: there are no "iterations to tol"); ``planted`` — feasible targets
   τ = Aᵀ(m ⊙ π*) of a known π* = min(1, e^{Aλ*}), λ*_j = log min(1, cap/c_j) + N(0, 0.3²)
   (computed once on the driver and cached beside the data): iterations to ``--tol``; and, with
   ``--target-size``, ``target_size`` — the cap solved for that size. The paths:

   * ``driver`` — ``SignatureTable`` + the SciPy operator (``run_method``; original driver code);
   * ``driver-repro`` — the reproducible block kernels on the driver (``MemoryBlockOperator``:
     what ``run_method_auto`` uses below its size threshold);
   * ``spark`` — ``SparkOperator`` on a ``--master`` session (default ``local[2]``): cached
     NumPy blocks, broadcast λ, per-partition binned ``Aᵀ`` sums merged in partition order.

   Reported per path: time to load/build, solver seconds, iterations (to ``--tol``), status,
   passes over the table (each accepted iteration is one pass, each rejected candidate one
   more; on Spark every pass is one job), seconds per pass and per iteration, final KKT / L1
   errors, and the peak RSS of the driver process and, on Spark, of the JVM and of the Python
   workers (``/proc`` polled every 0.2 s).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GENERATOR_VERSION = 1  # bump when the generator changes, so cached data is not reused
MIB = 1024 * 1024
PATHS = ("driver", "driver-repro", "spark", "scipy")


# ---------------------------------------------------------------------------- data
def _mean_multiplicity(exponent: float = 2.5, cap: int = 1000) -> float:
    """E[min(Z, cap)] for Z ~ Zipf(exponent) (numpy's ``zipf``), summed numerically."""
    from scipy.special import zeta

    k = np.arange(1, 2_000_001, dtype=np.float64)
    p = k**-exponent / zeta(exponent)
    return float(np.sum(np.minimum(k, cap) * p) + cap * max(0.0, 1.0 - p.sum()))


def data_key(args: argparse.Namespace) -> str:
    return f"s{args.samples}_e{args.entries}_k{args.mean_k:g}_seed{args.seed}_v{GENERATOR_VERSION}"


def ensure_data(args: argparse.Namespace) -> tuple[Path, dict]:
    """Generate and write the signature table once; return its Parquet directory and facts."""
    import pyarrow.parquet as pq

    from curation.balancing.synthetic import synthetic_table

    directory = Path(args.workdir) / "data" / data_key(args)
    meta_file = directory / "meta.json"
    if meta_file.exists():
        return directory / "signatures", json.loads(meta_file.read_text())
    t0 = time.perf_counter()
    n_sig = max(1, round(args.samples / _mean_multiplicity()))
    table = synthetic_table(n_sig, args.entries, mean_k=args.mean_k, seed=args.seed)
    gen = time.perf_counter() - t0
    arrow = table.to_arrow()
    tmp = directory.with_name(directory.name + ".tmp")
    (tmp / "signatures").mkdir(parents=True, exist_ok=True)
    bounds = np.linspace(0, arrow.num_rows, args.files + 1).astype(np.int64)
    for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        part = tmp / "signatures" / f"part-{i:05d}.parquet"
        pq.write_table(arrow.slice(int(a), int(b - a)), part)
    meta = {
        "samples": int(table.n_samples),
        "signatures": int(table.n_signatures),
        "entries": int(table.n_entries),
        "entries_observed": int((table.entry_counts() > 0).sum()),
        "nnz": int(table.nnz),
        "mean_k": float(table.nnz / max(table.n_signatures, 1)),
        "max_count": int(table.entry_counts().max()),
        "generate_seconds": round(gen, 2),
        "write_seconds": round(time.perf_counter() - t0 - gen, 2),
        "files": args.files,
        "bytes": sum(f.stat().st_size for f in (tmp / "signatures").glob("*.parquet")),
    }
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    tmp.rename(directory)
    return directory / "signatures", meta


# ---------------------------------------------------------------------------- memory
def _rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        kids.setdefault(ppid, []).append(int(name))
    return kids


def _kind(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return "other"
    if "java" in cmd.split(" ", 1)[0]:
        return "jvm"
    if "pyspark" in cmd or "daemon" in cmd or "worker" in cmd:
        return "python_workers"
    return "other"


class TreeMonitor(threading.Thread):
    """Peak RSS (MiB) of a process (``driver``) and of its descendants by kind."""

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.peak: dict[str, float] = {"driver": 0.0, "jvm": 0.0, "python_workers": 0.0}
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            kids = _children()
            by_kind = {"driver": _rss_kib(self.pid) / 1024, "jvm": 0.0, "python_workers": 0.0}
            todo = list(kids.get(self.pid, []))
            while todo:
                p = todo.pop()
                todo.extend(kids.get(p, []))
                k = _kind(p)
                if k in by_kind:
                    by_kind[k] += _rss_kib(p) / 1024
            for k, v in by_kind.items():
                self.peak[k] = max(self.peak[k], v)
            self._halt.wait(self.interval)

    def stop(self) -> dict[str, float]:
        self._halt.set()
        self.join()
        return {k: round(v, 1) for k, v in self.peak.items()}


# ---------------------------------------------------------------------------- one path
def planted_targets(args: argparse.Namespace, directory: Path, meta: dict) -> Path:
    """τ = Aᵀ(m ⊙ π*) of the planted problem, cached as ``.npy`` beside the data."""
    import pyarrow.parquet as pq

    from curation.balancing import SignatureTable

    out = directory.parent / f"planted_cap{args.cap:g}_seed{args.seed}.npy"
    if not out.exists():
        table = SignatureTable.from_arrow(pq.read_table(directory), meta["entries"])
        c = table.entry_counts().astype(np.float64)
        rng = np.random.default_rng(args.seed)
        lam = np.where(c > args.cap, np.log(args.cap / np.maximum(c, 1)), 0.0)
        lam += rng.normal(0.0, 0.3, c.size)
        pi = np.where(table.k > 0, np.exp(np.minimum(table.row_sums(lam), 0.0)), 0.0)
        np.save(out, table.entry_sums(table.multiplicity * pi))
    return out


def run_path(args: argparse.Namespace, directory: Path, meta: dict) -> dict:
    """Run one path in this process; return its measurements."""
    from curation.balancing import SignatureTable
    from curation.balancing.rake import rake_on

    out: dict = {"path": args.run_path}
    wanted = [p.strip() for p in args.problems.split(",") if p.strip()]
    problems = []
    if "capped" in wanted:
        # the plain capped calibration (no fixed rows): the problem every solver path, SciPy's
        # L-BFGS-B and the previous GIS iteration solve alike
        problems.append(("capped", {"t": args.cap, "objective": "l1"}))
    if "planted" in wanted:
        tau = np.load(planted_targets(args, directory, meta))
        problems.append(("planted", {"entry_targets": tau}))
    if args.target_size:
        problems.append(("target_size", {"target_size": args.target_size}))
    t0 = time.perf_counter()
    if args.run_path == "scipy":
        return scipy_reference(args, directory, meta, problems)
    if args.run_path in ("driver", "driver-repro"):
        import pyarrow.parquet as pq

        from curation.balancing.blocks import MemoryBlockOperator
        from curation.balancing.operators import LocalOperator

        table = SignatureTable.from_arrow(pq.read_table(directory), meta["entries"])
        out["load_seconds"] = time.perf_counter() - t0

        def make_op():
            return LocalOperator(table) if args.run_path == "driver" else MemoryBlockOperator(table)
    else:
        from curation.balancing.spark_operator import SparkOperator
        from curation.spark import SparkConfig, get_spark

        spark = get_spark(
            SparkConfig(
                master=args.master,
                driver_memory=args.driver_memory,
                local_dir=str(Path(args.workdir) / "spark-local"),
            )
        )
        out["session_seconds"] = time.perf_counter() - t0
        df = spark.read.parquet(str(directory))

        def make_op():
            return SparkOperator(spark, df, meta["entries"], num_partitions=args.partitions)

    for name, kw in problems:
        t1 = time.perf_counter()
        op = make_op()
        build = time.perf_counter() - t1
        passes0 = getattr(op, "passes", 0)
        t2 = time.perf_counter()
        res = rake_on(op, tol=args.tol, max_iter=args.max_iter, **kw)
        wall = time.perf_counter() - t2
        info = res.info
        row = {
            "problem": name,
            "build_seconds": build,
            "wall_seconds": wall,
            "solver_seconds": info["seconds"],
            "status": info["status"],
            "iterations": info["iterations"],
            "solver_passes": info["passes"],
            "t": info["t"],
            "expected_size": info["expected_size"],
            "kkt_err": info["kkt_err"],
            "max_rel_err": info["max_rel_err"],
            "l1": info["l1"],
            "n_infeasible_entries": info["n_infeasible_entries"],
            "size_evaluations": len(info["size_search"]),
            "passes_to_tol": next(
                (h["passes"] for h in res.history if h.get("kkt_err", np.inf) <= args.tol), None
            ),
        }
        if hasattr(op, "passes"):  # block operators count every pass (setup, scoring, search)
            row["passes"] = op.passes - passes0
            row["pass_seconds"] = op.pass_seconds
            row["partitions"] = op.num_partitions
        else:  # SciPy operator: the solver's own passes; the rest is negligible
            row["passes"] = info["passes"]
        row["seconds_per_pass"] = wall / max(row["passes"], 1)
        total_iters = info["iterations"]
        row["total_iterations"] = total_iters
        row["seconds_per_iteration"] = wall / max(total_iters, 1)
        out.setdefault("problems", []).append(row)
        if hasattr(op, "unpersist"):
            op.unpersist()
    return out


def scipy_reference(
    args: argparse.Namespace, directory: Path, meta: dict, problems: list[tuple[str, dict]]
) -> dict:
    """The reference solver: SciPy's L-BFGS-B on the same box dual, same scaling, same start
    (λ_j = log min(1, τ_j/c_j)) and the same KKT measure, one pass per function-and-gradient
    evaluation (SciPy's own line search). Problems with fixed targets only (capped, planted)."""
    import pyarrow.parquet as pq

    from curation.balancing import SignatureTable
    from curation.balancing.operators import LocalOperator
    from curation.balancing.targets import cap_vector, capped_targets

    t0 = time.perf_counter()
    table = SignatureTable.from_arrow(pq.read_table(directory), meta["entries"])
    out: dict = {"path": "scipy", "load_seconds": time.perf_counter() - t0, "problems": []}
    work = LocalOperator(table).work(False)
    prob, counts = work.rake_problem(()), work.counts().astype(np.float64)
    for name, kw in problems:
        if "target_size" in kw:
            continue
        if "t" in kw:
            tau = capped_targets(counts, cap_vector(counts.size, kw["t"], None))
        else:
            tau = np.asarray(kw["entry_targets"], dtype=np.float64)
        out["problems"].append({"problem": name, **_scipy_solve(prob, counts, tau, args)})
    return out


def _scipy_solve(prob, counts: np.ndarray, tau: np.ndarray, args: argparse.Namespace) -> dict:
    from scipy.optimize import minimize

    from curation.balancing.dual_solver import kkt_errors

    bound = 10.0
    fidx = np.flatnonzero((tau > 0) & (counts > 0))
    tau_f, scale = tau[fidx], np.sqrt(np.maximum(tau[fidx], 1.0))
    trace: list[float] = []  # KKT error after each pass

    def fun(z: np.ndarray) -> tuple[float, np.ndarray]:
        lam = np.zeros(counts.size)
        lam[fidx] = z / scale
        point = prob.point(lam)
        n_f = point.n()[fidx]
        lf = lam[fidx]
        trace.append(float(kkt_errors(n_f, tau_f, lf, bound).max(initial=0.0)))
        return point.sum_phi() - float(tau_f @ lf), (n_f - tau_f) / scale

    z0 = np.clip(np.log(np.minimum(tau_f / counts[fidx], 1.0)), -bound, bound) * scale
    t1 = time.perf_counter()
    res = minimize(
        fun,
        z0,
        jac=True,
        method="L-BFGS-B",
        bounds=list(zip(-bound * scale, bound * scale, strict=True)),
        options={"maxfun": args.max_iter, "maxiter": args.max_iter, "ftol": 0.0, "gtol": 0.0},
    )
    wall = time.perf_counter() - t1
    to_tol = next((i + 1 for i, e in enumerate(trace) if e <= args.tol), None)
    return {
        "wall_seconds": wall,
        "status": "converged" if to_tol else "not reached",
        "message": str(res.message),
        "passes": len(trace),
        "passes_to_tol": to_tol,
        "kkt_err": min(trace),
        "iterations": int(res.nit),
        "total_iterations": int(res.nit),
        "seconds_per_pass": wall / max(len(trace), 1),
    }


# ---------------------------------------------------------------------------- main
def _fmt(rows: list[dict]) -> str:
    def num(x: object, spec: str, width: int) -> str:
        return f"{x:>{width}{spec}}" if isinstance(x, (int, float)) else f"{'-':>{width}}"

    head = (
        f"{'path':<13} {'problem':<11} {'status':<10} {'iters':>6} {'passes':>6} {'to tol':>6} "
        f"{'s/pass':>7} {'solve s':>8} {'build s':>8} {'KKT':>8} {'L1':>7} "
        f"{'driver MiB':>10} {'JVM MiB':>8} {'workers MiB':>11}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        rss = r.get("rss_mib", {})
        for p in r.get("problems", []):
            lines.append(
                f"{r['path']:<13} {p['problem']:<11} {p['status'][:10]:<10} "
                f"{num(p.get('iterations'), 'd', 6)} {num(p.get('passes'), 'd', 6)} "
                f"{num(p.get('passes_to_tol'), 'd', 6)} {num(p.get('seconds_per_pass'), '.3f', 7)} "
                f"{num(p.get('wall_seconds'), '.1f', 8)} {num(p.get('build_seconds'), '.1f', 8)} "
                f"{num(p.get('kkt_err'), '.1e', 8)} {num(p.get('l1'), '.4f', 7)} "
                f"{num(rss.get('driver'), '.0f', 10)} {num(rss.get('jvm'), '.0f', 8)} "
                f"{num(rss.get('python_workers'), '.0f', 11)}"
            )
        if "error" in r:
            lines.append(f"{r['path']:<13} FAILED: {r['error'][:200]}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=10_000_000, help="pool size Σ multiplicity")
    ap.add_argument("--entries", type=int, default=500_000, help="metadata entries")
    ap.add_argument("--mean-k", type=float, default=3.0, help="mean entries per signature")
    ap.add_argument("--cap", type=float, default=100.0, help="t of the capped target min(c_j, t)")
    ap.add_argument("--problems", default="capped,planted", help="comma list: capped, planted")
    ap.add_argument("--target-size", type=float, default=0.0, help="also solve t for this size")
    ap.add_argument("--tol", type=float, default=1e-3)
    ap.add_argument("--max-iter", type=int, default=2000)
    ap.add_argument("--paths", default=",".join(PATHS), help=f"comma list of {PATHS}")
    ap.add_argument("--master", default="local[2]")
    ap.add_argument("--driver-memory", default="4g")
    ap.add_argument("--partitions", type=int, default=None, help="Spark blocks (default: input)")
    ap.add_argument("--files", type=int, default=16, help="Parquet files of the table")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", default=str(ROOT / "bench" / "out" / "balance"))
    ap.add_argument("--run-path", choices=PATHS, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    directory, meta = ensure_data(args)
    if args.run_path:  # child process: one path, one JSON line
        print("RESULT " + json.dumps(run_path(args, directory, meta)), flush=True)
        return
    print(f"data: {directory} {json.dumps(meta)}", flush=True)
    if "planted" in args.problems:
        planted_targets(args, directory, meta)
    results = []
    for path in [p.strip() for p in args.paths.split(",") if p.strip()]:
        cmd = [sys.executable, __file__, *(argv if argv is not None else sys.argv[1:])]
        cmd += ["--run-path", path]
        load0 = os.getloadavg()
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        mon = TreeMonitor(proc.pid)
        mon.start()
        stdout, stderr = proc.communicate()
        rss = mon.stop()
        row: dict = {"path": path}
        for line in stdout.splitlines():
            if line.startswith("RESULT "):
                row = json.loads(line[len("RESULT ") :])
        if proc.returncode != 0 or "problems" not in row:
            row["error"] = stderr.strip().splitlines()[-1] if stderr.strip() else "no result"
        row["rss_mib"] = rss
        row["process_seconds"] = time.perf_counter() - t0
        row["loadavg_before"], row["loadavg_after"] = load0, os.getloadavg()
        results.append(row)
        print(json.dumps(row), flush=True)
    print()
    print(_fmt(results))
    report = {
        "data": meta,
        "args": {k: v for k, v in vars(args).items() if k != "run_path"},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "results": results,
    }
    out = Path(args.workdir) / f"results-{data_key(args)}.json"
    out.write_text(json.dumps(report, indent=1))
    print(f"\nwritten {out}")


if __name__ == "__main__":
    main()
