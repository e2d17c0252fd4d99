"""Measure how fast tracer/unwind.py unwinds real snapshots (a measurement, not a test).

Builds tests/helpers/stackdump.c, dumps a few stacks (main thread at several recursion depths, a
thread, a signal handler, qsort through glibc) and unwinds each many times:

    .venv/bin/python tests/helpers/measure_unwind_speed.py [ROUNDS]

Reports the first-use cost (lazy .eh_frame_hdr index + decoding the FDEs the stacks touch), then
frames/s and stacks/s with a warm pc->row cache (the steady state of a tracer) and with a fresh
Unwinder per stack (row cache cold, CFI tables already shared).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.test_unwind import read_dump  # noqa: E402
from tracer.cfi import clear_cfi_table_cache  # noqa: E402
from tracer.unwind import Unwinder, modules_from_maps  # noqa: E402

SOURCE = Path(__file__).with_name("stackdump.c")
WORKLOADS = [("main", 0), ("main", 10), ("main", 40), ("thread", 10), ("signal", 5), ("qsort", 5)]


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    with tempfile.TemporaryDirectory() as directory:
        binary = Path(directory) / "stackdump"
        subprocess.run(
            ["gcc", "-O2", "-g", "-fomit-frame-pointer", "-pthread", "-o", str(binary), str(SOURCE)], check=True
        )
        dumps = []
        for mode, depth in WORKLOADS:
            output = Path(directory) / f"{mode}-{depth}.bin"
            subprocess.run([str(binary), mode, str(depth), str(output)], check=True)
            dumps.append((f"{mode} depth {depth}", read_dump(output)))

        clear_cfi_table_cache()
        started = time.perf_counter()
        first_results = []
        for _label, dump in dumps:
            first_results.append(Unwinder(modules_from_maps(dump.maps)).unwind(dump.snapshot()))
        first_use = time.perf_counter() - started
        print(f"first use (maps, ELF headers, hdr index, FDE decode) for {len(dumps)} stacks: {first_use * 1e3:.1f} ms")

        columns = ["warm µs/frame", "warm stacks/s", "cold µs/frame"]
        print(f"{'workload':<18} {'frames':>6} {'status':<10} " + " ".join(f"{column:>13}" for column in columns))
        total_frames = 0
        total_warm = 0.0
        for (label, dump), first in zip(dumps, first_results, strict=True):
            modules = modules_from_maps(dump.maps)
            snapshot = dump.snapshot()
            unwinder = Unwinder(modules)
            unwinder.unwind(snapshot)
            started = time.perf_counter()
            for _ in range(rounds):
                result = unwinder.unwind(snapshot)
            warm = time.perf_counter() - started
            assert result.pcs == first.pcs
            cold_rounds = max(1, rounds // 10)
            started = time.perf_counter()
            for _ in range(cold_rounds):
                Unwinder(modules).unwind(snapshot)
            cold = time.perf_counter() - started
            frames = len(first.pcs)
            total_frames += frames * rounds
            total_warm += warm
            print(
                f"{label:<18} {frames:>6} {first.status:<10} {warm / rounds / frames * 1e6:>13.2f}"
                f" {rounds / warm:>13.0f} {cold / cold_rounds / frames * 1e6:>13.2f}"
            )
        print(f"overall warm: {total_frames / total_warm:,.0f} frames/s")


if __name__ == "__main__":
    main()
