"""Driver-side rake benchmark on a synthetic signature table.

    .venv/bin/python bench/bench_solver.py --signatures 1000000 --entries 50000 --cap 1000

Prints one JSON line per problem: iterations, passes over the table, seconds, seconds per
iteration, final errors and status. Problems: the capped target min(c_j, t) (usually partly
infeasible on Zipf data) and a planted feasible one (targets computed from a known π).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from curation.balancing.dual_solver import solve_box_dual
from curation.balancing.operators import LocalRakeOperator
from curation.balancing.rake import build_problem
from curation.balancing.synthetic import synthetic_table
from curation.balancing.targets import capped_targets


def run(
    signatures: int, entries: int, cap: float, tol: float, max_iter: int, seed: int, mean_k: float
) -> list[dict]:
    t0 = time.perf_counter()
    tab = synthetic_table(signatures, entries, mean_k=mean_k, seed=seed)
    prob = build_problem(tab)
    setup = time.perf_counter() - t0
    c = prob.A.T @ prob.mult
    rng = np.random.default_rng(seed)
    lam_star = np.where(c > cap, np.log(cap / np.maximum(c, 1)), 0.0) + rng.normal(0, 0.3, c.size)
    pi_star = np.exp(np.minimum(prob.A @ lam_star, 0.0))
    problems = {
        f"capped_t{cap:g}": capped_targets(c, cap),
        "planted_feasible": prob.A.T @ (prob.mult * pi_star),
    }
    out = []
    for name, tau in problems.items():
        sol = solve_box_dual(
            LocalRakeOperator.from_problem(prob), tau, tol=tol, max_passes=max_iter
        )
        out.append(
            {
                "problem": name,
                "signatures": signatures,
                "entries": entries,
                "nnz": int(prob.A.nnz),
                "samples": int(prob.mult.sum()),
                "setup_seconds": round(setup, 2),
                "status": sol.status,
                "iterations": sol.iterations,
                "passes": sol.passes,
                "seconds": round(sol.seconds, 2),
                "seconds_per_pass": round(sol.seconds / max(sol.passes, 1), 4),
                "kkt_err": sol.kkt_err,
                "max_rel_err": sol.max_rel_err,
                "l1": sol.l1,
                "unmet_entries": int(sol.unmet.size),
                "certified_infeasible": sol.certificate.get("found"),
            }
        )
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--signatures", type=int, default=1_000_000)
    ap.add_argument("--entries", type=int, default=50_000)
    ap.add_argument("--mean-k", type=float, default=3.0)
    ap.add_argument("--cap", type=float, default=1000.0)
    ap.add_argument("--tol", type=float, default=1e-3)
    ap.add_argument("--max-iter", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    for row in run(a.signatures, a.entries, a.cap, a.tol, a.max_iter, a.seed, a.mean_k):
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
