"""What `record` (arena-trace -p PID) and `run` share: options, output checks, and what happens after a
recording (the live report, --json, --speedscope) — through the same analysis code as `analyze`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from arena_trace.analysis.output_files import check_writable
from arena_trace.errors import EnvironmentProblem, OutputError, UsageError
from arena_trace.tracer.session import RecordOptions
from arena_trace.tracer.trace_format import Trace


def positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r}: expected seconds, e.g. 10 or 0.5") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"duration must be a positive number of seconds, not {text}")
    return value


def add_recording_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-d", "--duration", type=positive_seconds, metavar="SECONDS",
                        help="stop after this many seconds (default: until Ctrl-C or the target exits)")
    parser.add_argument("--full", action="store_true",
                        help="also trace every malloc/free/calloc/realloc/_int_malloc/_int_free (costly: "
                             "about 1 µs per call), aggregated in the kernel")
    parser.add_argument("--full-events", action="store_true",
                        help="with --full: record every call as an event (batched, for the trace file) instead "
                             "of in-kernel histograms; implies --full")
    parser.add_argument("--allocator", choices=("auto", "glibc", "native"), default="auto",
                        help="which allocator to trace (default: every supported one found in the process)")
    parser.add_argument("-o", "--output", type=Path, metavar="FILE", help="write the trace to FILE (mode 0600)")
    parser.add_argument("--force", action="store_true", help="overwrite existing output files")
    parser.add_argument("--json", type=Path, metavar="FILE",
                        help="also write the report as an arena-trace/summary/1 JSON document ('-' = stdout)")
    parser.add_argument("--speedscope", type=Path, metavar="FILE", help="also write a speedscope flamegraph")
    parser.add_argument("--top", type=int, default=10, metavar="N", help="rows per table in the report")
    parser.add_argument("--debug-dir", action="append", default=[], metavar="DIR",
                        help="extra directory holding .build-id/xx/yyyy.debug files")
    parser.add_argument("--quiet", action="store_true", help="no progress messages")


def require_privileges() -> None:
    """Refuse before reading the target or compiling anything: without privileges the BPF compile fails
    only after seconds of compiler noise, and /proc of another user's process raises PermissionError."""
    from arena_trace.tracer.environment import check_privileges

    check = check_privileges()
    if not check.ok:
        raise EnvironmentProblem(f"tracing needs privileges ({check.detail}): rerun with sudo")


def recording_options(arguments: argparse.Namespace) -> RecordOptions:
    if arguments.top < 1:
        raise UsageError("--top must be at least 1")
    require_privileges()
    for path, what in ((arguments.output, "trace file"), (arguments.json, "JSON file"),
                       (arguments.speedscope, "speedscope file")):
        if path is not None and str(path) != "-":
            check_writable(path, arguments.force, what)
    return RecordOptions(duration=arguments.duration, full=arguments.full or arguments.full_events,
                         allocator=arguments.allocator, output=arguments.output, force=arguments.force,
                         debug_directories=tuple(arguments.debug_dir))


def progress_printer(arguments: argparse.Namespace):
    if arguments.quiet:
        return lambda _message: None
    return lambda message: print(f"arena-trace: {message}", file=sys.stderr, flush=True)


def finish(trace: Trace, arguments: argparse.Namespace, to_stderr: bool = False) -> None:
    """The live report and the extra outputs, from the in-memory Trace (same code path as `analyze`)."""
    import json

    from rich.console import Console

    from arena_trace.analysis.aggregate import Analysis, AnalysisOptions
    from arena_trace.analysis.report import render_report
    from arena_trace.analysis.summary import build_summary

    options = AnalysisOptions(top=arguments.top)
    analysis = Analysis(trace, options)
    if arguments.json is not None:
        document = json.dumps(build_summary(trace, options, analysis), indent=2) + "\n"
        if str(arguments.json) == "-":
            sys.stdout.write(document)
        else:
            try:
                arguments.json.write_text(document)
            except OSError as error:
                raise OutputError(f"cannot write {arguments.json}: {error.strerror or error}") from None
    if arguments.speedscope is not None:
        from arena_trace.commands.flamegraph import export

        export(trace, "speedscope", arguments.speedscope, force=arguments.force)
        print(f"arena-trace: flamegraph written to {arguments.speedscope} "
              f"(view it with: arena-trace view {arguments.speedscope})", file=sys.stderr)
    if str(arguments.json) != "-":
        stream = sys.stderr if to_stderr else sys.stdout
        console = Console(file=stream, highlight=False, width=None if stream.isatty() else 160)
        render_report(trace, options, console, analysis)
