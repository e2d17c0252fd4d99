"""Tests of the arena-workload program: its JSON report must match the documented call-count formula of
every scenario exactly, since tracer tests use these counts as ground truth."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
NATIVE_DIR = REPO / "native_alloc"
WORKLOAD = NATIVE_DIR / "build" / "arena-workload"

GLIBC_SCENARIOS = ["fastpath", "contention", "growth", "mmap-thrash", "consolidation", "churn"]
NATIVE_SCENARIOS = [*GLIBC_SCENARIOS, "batch-contention"]
GLIBC_KEYS = ["malloc", "free", "calloc", "realloc"]
NATIVE_KEYS = ["na_alloc", "na_free", "na_alloc_batch", "na_consolidate", "na_reset", "na_arena_create",
               "na_arena_destroy"]

# constants of arena_workload.c that the formulas depend on
CONSOLIDATION_SMALL = 64
CHURN_PAIRS = 4
BATCH_N = 16
TCACHE_BATCH = 16
DEFAULT_LIVE = {"growth": 4096}


@pytest.fixture(scope="module", autouse=True)
def native_build() -> None:
    proc = subprocess.run(["make", "-C", str(NATIVE_DIR)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def run(*args: str, env: dict[str, str] | None = None, check: bool = True) -> dict[str, Any]:
    proc = subprocess.run([str(WORKLOAD), *args], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, **(env or {})))
    if check:
        assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def worker_formula(allocator: str, scenario: str, iterations: int, live: int) -> dict[str, int]:
    """Calls one worker thread (plus, for churn, its short-lived threads) makes in `iterations`."""
    alloc, free = ("malloc", "free") if allocator == "glibc" else ("na_alloc", "na_free")
    n = iterations
    if scenario in ("fastpath", "contention", "mmap-thrash"):
        return {alloc: n, free: n}
    if scenario == "growth":
        if allocator == "native":
            return {alloc: n, free: n}
        kinds = [(i % live) % 4 for i in range(n)]
        m, c, r = (sum(k < 2 for k in kinds), kinds.count(2), kinds.count(3))
        return {"malloc": m, "calloc": c, "realloc": r, "free": m + c}
    if scenario == "consolidation":
        out = {alloc: (CONSOLIDATION_SMALL + 1) * n, free: (CONSOLIDATION_SMALL + 1) * n}
        if allocator == "native":
            out["na_consolidate"] = n
        return out
    if scenario == "churn":
        return {alloc: CHURN_PAIRS * n, free: CHURN_PAIRS * n}
    if scenario == "batch-contention":
        return {"na_alloc_batch": n, "na_free": BATCH_N * n}
    raise AssertionError(scenario)


def check_report(rep: dict[str, Any], allocator: str, scenario: str, threads: int,
                 iterations: int | None, per_thread_arena: bool = False) -> None:
    keys = GLIBC_KEYS if allocator == "glibc" else NATIVE_KEYS
    assert rep["allocator"] == allocator and rep["scenario"] == scenario and rep["threads"] == threads
    assert rep["verify_errors"] == 0
    assert list(rep["calls"]) == keys
    assert rep["elapsed_ns"] > 0

    threads_ = rep["per_thread"]
    tids = [t["tid"] for t in threads_]
    assert len(set(tids)) == len(tids)
    mains = [t for t in threads_ if t["role"] == "main"]
    workers = [t for t in threads_ if t["role"] == "worker"]
    churners = [t for t in threads_ if t["role"] == "churn"]
    assert len(mains) == 1 and mains[0]["tid"] == rep["pid"]
    assert sorted(w["index"] for w in workers) == list(range(threads))
    assert all(w["tid"] != rep["pid"] for w in workers)

    # per-thread counts add up to the totals
    for k in keys:
        assert sum(t["calls"][k] for t in threads_) == rep["calls"][k], k
    assert sum(t["bytes_requested"] for t in threads_) == rep["bytes_requested"]
    assert sum(w["iterations"] for w in workers) == rep["iterations_total"]

    # the documented formula, worker by worker
    live = rep["live"]
    expected = dict.fromkeys(keys, 0)
    for w in workers:
        if iterations is not None:
            assert w["iterations"] == iterations
        for k, v in worker_formula(allocator, scenario, w["iterations"], live).items():
            expected[k] += v
    if allocator == "native":
        narenas = threads if per_thread_arena else 1
        expected["na_arena_create"] = narenas
        expected["na_arena_destroy"] = narenas
        assert mains[0]["calls"]["na_arena_destroy"] == narenas
    assert rep["calls"] == expected

    if scenario == "churn":
        assert len(churners) == rep["iterations_total"]
        for t in churners:
            alloc = "malloc" if allocator == "glibc" else "na_alloc"
            assert t["calls"][alloc] == CHURN_PAIRS
        assert all(w["calls"][k] == 0 for w in workers for k in keys if not k.startswith("na_arena"))
    else:
        assert not churners

    if allocator == "native":
        check_native_stats(rep, scenario, per_thread_arena)
    else:
        assert "native_stats" not in rep


def check_native_stats(rep: dict[str, Any], scenario: str, per_thread_arena: bool) -> None:
    s, c = rep["native_stats"], rep["calls"]
    assert s["arenas"] == (rep["threads"] if per_thread_arena else 1)
    assert s["allocs"] == c["na_alloc"]
    assert s["frees"] == c["na_free"]
    assert s["consolidations"] == c["na_consolidate"]
    assert s["resets"] == c["na_reset"] == 0
    # explicit batches plus thread-cache refills; both hand out 16 objects each
    assert s["batches"] >= c["na_alloc_batch"]
    assert s["batch_objects"] == BATCH_N * c["na_alloc_batch"] + TCACHE_BATCH * (s["batches"] - c["na_alloc_batch"])
    if not rep["tcache"]:
        assert s["batches"] == c["na_alloc_batch"]
    # every worker freed what it allocated and flushed its cache when it exited
    assert s["bytes_in_use"] == 0
    assert s["lock_acquisitions"] >= s["lock_waits"] + s["batches"]
    if scenario == "mmap-thrash":
        assert s["large_maps"] == s["large_unmaps"] == c["na_alloc"]
        assert s["large_blocks"] == 0
    else:
        assert s["grows"] >= 1 and s["large_maps"] == 0
    assert s["chunks"] <= s["grows"]
    assert 0.0 <= s["fragmentation"] <= 1.0 and 0.0 <= s["largest_free_share"] <= 1.0
    if per_thread_arena:
        assert s["lock_waits"] == 0


ITER = {"consolidation": 200, "churn": 25, "mmap-thrash": 200, "growth": 700}


@pytest.mark.parametrize("scenario", GLIBC_SCENARIOS)
def test_glibc_scenarios(scenario: str) -> None:
    n = ITER.get(scenario, 2000)
    extra = ["--live", "300"] if scenario == "growth" else []
    rep = run("--allocator", "glibc", "--scenario", scenario, "--threads", "2", "--iterations", str(n), *extra)
    check_report(rep, "glibc", scenario, 2, n)


@pytest.mark.parametrize("scenario", NATIVE_SCENARIOS)
@pytest.mark.parametrize("per_thread_arena", [False, True])
def test_native_scenarios(scenario: str, per_thread_arena: bool) -> None:
    n = ITER.get(scenario, 2000)
    extra = ["--arena-per-thread"] if per_thread_arena else []
    rep = run("--allocator", "native", "--scenario", scenario, "--threads", "3", "--iterations", str(n), *extra)
    check_report(rep, "native", scenario, 3, n, per_thread_arena)


def test_growth_formula_uses_live_rounds() -> None:
    rep = run("--allocator", "glibc", "--scenario", "growth", "--iterations", "103", "--live", "10")
    # per 10-iteration round: malloc at j=0,1,4,5,8,9, calloc at j=2,6, realloc at j=3,7; then j=0,1,2
    assert rep["calls"] == {"malloc": 62, "free": 83, "calloc": 21, "realloc": 20}
    check_report(rep, "glibc", "growth", 1, 103)


def test_sizes_respected() -> None:
    bounds = {"small": (1, 128), "medium": (129, 1024), "large": (1025, 64 * 1024)}
    for sizes, (lo, hi) in bounds.items():
        rep = run("--scenario", "fastpath", "--sizes", sizes, "--iterations", "500")
        mean = rep["bytes_requested"] / rep["calls"]["malloc"]
        assert lo <= mean <= hi, sizes


def test_contention_native_shared_arena_waits() -> None:
    # lock waits are timing-dependent; three 4-thread runs that all see none would mean the lock is
    # not shared at all
    waits = []
    for _ in range(3):
        rep = run("--allocator", "native", "--scenario", "contention", "--threads", "4", "--iterations", "20000")
        check_report(rep, "native", "contention", 4, 20000)
        waits.append(rep["native_stats"]["lock_waits"])
        if waits[-1] > 0:
            break
    assert max(waits) > 0, waits
    assert rep["tcache"] is False


def test_contention_native_arena_per_thread_never_waits() -> None:
    rep = run("--allocator", "native", "--scenario", "contention", "--threads", "4", "--iterations", "20000",
              "--arena-per-thread")
    check_report(rep, "native", "contention", 4, 20000, per_thread_arena=True)
    assert rep["native_stats"]["lock_waits"] == 0
    assert rep["native_stats"]["lock_acquisitions"] > 4 * 20000


def test_deterministic_single_thread() -> None:
    def strip(rep: dict[str, Any]) -> dict[str, Any]:
        rep = dict(rep)
        for k in ("elapsed_ns", "pid"):
            rep.pop(k)
        rep["per_thread"] = [{k: v for k, v in t.items() if k != "tid"} for t in rep["per_thread"]]
        return rep

    for allocator in ("glibc", "native"):
        args = ("--allocator", allocator, "--scenario", "growth", "--sizes", "mixed", "--iterations", "3000",
                "--seed", "7")
        a, b = run(*args), run(*args)
        assert strip(a) == strip(b)
        c = run(*args[:-1], "8")
        assert c["bytes_requested"] != a["bytes_requested"]


def test_duration_mode() -> None:
    rep = run("--allocator", "native", "--scenario", "fastpath", "--threads", "2", "--duration", "0.3")
    assert rep["iterations"] is None and rep["duration_s"] == pytest.approx(0.3)
    assert rep["iterations_total"] > 0
    assert 0.25e9 <= rep["elapsed_ns"] <= 3e9
    check_report(rep, "native", "fastpath", 2, None)


def test_wait_signal() -> None:
    proc = subprocess.Popen([str(WORKLOAD), "--allocator", "native", "--scenario", "fastpath", "--iterations", "100",
                             "--wait-signal"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ready, _, _ = select.select([proc.stderr], [], [], 10)
        assert ready, "no ready line"
        line = proc.stderr.readline()
        assert line.strip() == f"ready pid={proc.pid}"
        time.sleep(0.3)
        assert proc.poll() is None, "did not wait for SIGUSR1"
        proc.send_signal(signal.SIGUSR1)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
    rep = json.loads(out)
    check_report(rep, "native", "fastpath", 1, 100)


def test_delay() -> None:
    t0 = time.monotonic()
    rep = run("--scenario", "fastpath", "--iterations", "10", "--delay", "0.4")
    assert time.monotonic() - t0 >= 0.4
    assert rep["elapsed_ns"] < 0.4e9  # the delay is before the measured run


def test_help() -> None:
    proc = subprocess.run([str(WORKLOAD), "--help"], capture_output=True, text=True)
    assert proc.returncode == 0
    for word in ("--allocator", "--scenario", "--wait-signal", "batch-contention", "--arena-per-thread"):
        assert word in proc.stdout


@pytest.mark.parametrize(
    "args",
    [
        ["--allocator", "jemalloc"],
        ["--scenario", "nope"],
        ["--sizes", "huge"],
        ["--threads", "0"],
        ["--allocator", "glibc", "--scenario", "batch-contention"],
        ["--iterations", "5", "--duration", "1"],
        ["--iterations", "x"],
    ],
)
def test_bad_arguments(args: list[str]) -> None:
    proc = subprocess.run([str(WORKLOAD), *args], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stdout == ""
