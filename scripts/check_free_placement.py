"""Manual check (root, bcc): a uprobe at the placement chosen for libc's free() fires once per call.

Builds a tiny C program that calls free(ptr) N times and free(NULL) N times, attaches a counting uprobe
at the chosen address (or at the entry with --entry, to compare the cost), and prints the counts and the
wall time per free() call. Run: python scripts/check_free_placement.py [--calls N] [--entry]
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from arena_trace.tracer.elf_file import open_elf
from arena_trace.tracer.placement import place_function
from arena_trace.tracer.process_maps import find_libc, modules
from arena_trace.tracer.symbols import load_symbol_table
from bcc import BPF

WORKLOAD = r"""
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
static volatile int go;
static void on_usr1(int s) { (void)s; go = 1; }
int main(int argc, char **argv) {
    int n = atoi(argv[1]);
    signal(SIGUSR1, on_usr1);
    printf("ready\n"); fflush(stdout);
    while (!go) pause();
    void *volatile pointer;
    void *volatile none = NULL;   /* volatile: GCC deletes a literal free(NULL) */
    for (int i = 0; i < n; i++) { pointer = malloc(32); free(pointer); }
    for (int i = 0; i < n; i++) free(none);
    printf("done\n"); fflush(stdout);
    return 0;
}
"""

PROGRAM = r"""
#include <uapi/linux/ptrace.h>
BPF_ARRAY(counts, u64, 2);
int on_free(struct pt_regs *ctx) {
    int key = PT_REGS_PARM1(ctx) == 0 ? 1 : 0;
    u64 *value = counts.lookup(&key);
    if (value) __sync_fetch_and_add(value, 1);
    return 0;
}
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=10000)
    parser.add_argument("--entry", action="store_true", help="probe the entry instead, for comparison")
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        source = Path(directory) / "free_loop.c"
        source.write_text(WORKLOAD)
        executable = Path(directory) / "free_loop"
        subprocess.run(["gcc", "-O1", "-o", str(executable), str(source)], check=True)
        child = subprocess.Popen([str(executable), str(arguments.calls)], stdout=subprocess.PIPE, text=True)
        try:
            return _measure(child, arguments.calls, arguments.entry)
        finally:
            if child.poll() is None:
                child.kill()
            child.wait()


def _measure(child: subprocess.Popen[str], calls: int, at_entry: bool) -> int:
    assert child.stdout is not None
    if child.stdout.readline().strip() != "ready":
        raise RuntimeError("workload did not start")
    libc = find_libc(modules(child.pid))
    if libc is None:
        raise RuntimeError("libc is not mapped in the workload")
    table = load_symbol_table(libc.host_path, target_path=libc.path)
    with open_elf(libc.host_path) as binary:
        placement = place_function(table, binary, "free")
    print(placement)
    address = placement.entry_address if at_entry else placement.probe_address
    bpf = BPF(text=PROGRAM)
    # bcc's addr= is an ELF virtual address; bcc turns it into the file offset the kernel wants.
    bpf.attach_uprobe(name=libc.host_path, addr=address, fn_name="on_free", pid=child.pid)
    started = time.monotonic()
    child.send_signal(signal.SIGUSR1)
    if child.stdout.readline().strip() != "done":
        raise RuntimeError("workload did not finish")
    elapsed = time.monotonic() - started
    counts = bpf["counts"]
    non_null, null = counts[counts.Key(0)].value, counts[counts.Key(1)].value
    print(f"probe at +{address - placement.entry_address:#x}: free(ptr) hits {non_null}/{calls}, "
          f"free(NULL) hits {null}/{calls}, {elapsed * 1e9 / (2 * calls):.0f} ns per free call "
          "(including the malloc)")
    return 0 if non_null == calls and null == calls else 1


if __name__ == "__main__":
    sys.exit(main())
