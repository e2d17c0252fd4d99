"""`arena-trace probes -p PID`: what would be attached, where, at what cost, and what each placement misses."""

from __future__ import annotations

import argparse
import json
import sys

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from arena_trace.commands.record import _pid
from arena_trace.errors import ExitCode


class ProbesCommand:
    name = "probes"
    help = "list the probes arena-trace would attach to a process"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("-p", "--pid", type=_pid, required=True)
        parser.add_argument("--full", action="store_true", help="include the full tier (every malloc/free)")
        parser.add_argument("--allocator", choices=("auto", "glibc", "native"), default="auto")
        parser.add_argument("--json", action="store_true", help="print the probe list as JSON")
        parser.add_argument("--debug-dir", action="append", default=[], metavar="DIR")

    def run(self, arguments: argparse.Namespace) -> int:
        from arena_trace.tracer.probe_plan import detect_allocators, plan_probes
        from arena_trace.tracer.session import check_target

        check_target(arguments.pid)
        allocators = detect_allocators(arguments.pid, arguments.allocator, tuple(arguments.debug_dir))
        plan = plan_probes(arguments.pid, allocators, full=arguments.full)
        described = [probe.describe() for probe in plan.probes]
        if arguments.json:
            document = {"pid": arguments.pid, "allocators": [a.describe() for a in plan.allocators],
                        "probes": described, "syscalls": [s.name for _, s in plan.syscalls],
                        "warnings": plan.warnings}
            print(json.dumps(document, indent=2))
            return ExitCode.OK
        console = Console(highlight=False, width=None if sys.stdout.isatty() else 200)
        for allocator in plan.allocators:
            info = allocator.describe()
            console.print(f"[bold]{escape(info['name'])}[/]: {escape(info['path'])} build-id {info['build_id']} "
                          f"debug symbols: {'yes' if info['debug_symbols'] else 'no'}")
        table = Table(title=f"probes for PID {arguments.pid}")
        for column in ("function", "symbol", "address", "tier", "placement", "cost", "misses", "why"):
            table.add_column(column, overflow="fold")
        for probe in described:
            address = "-" if probe["address"] is None else f"{probe['address']:#x}"
            if probe["offset"]:
                address += f" (+{probe['offset']:#x})"
            table.add_row(escape(probe["function"]), escape(probe["symbol"] or "-"), address, probe["tier"],
                          probe["placement"] or "not attachable", probe["cost_class"] or "-",
                          escape(probe["misses"] or "nothing"), escape(probe["reason"] or probe["error"] or ""))
        console.print(table)
        console.print("syscall tracepoints: " + ", ".join(syscall.name for _, syscall in plan.syscalls))
        for warning in plan.warnings:
            console.print(f"[yellow]warning:[/] {escape(warning)}")
        return ExitCode.OK


COMMAND = ProbesCommand()
