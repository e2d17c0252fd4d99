"""``arena-trace analyze FILE``: the live report, from a trace file alone.

Library API (what live mode calls with its in-memory Trace, so both print the same thing):

* ``render_report(trace, options=None, console=None)``: the rich report (analysis/report.py).
* ``build_summary(trace, options=None) -> dict``: the ``arena-trace/summary/1`` document (analysis/summary.py).
* ``AnalysisOptions(by="path", top=15, tid=None, since=None, until=None, interval=None)``.

Exit codes: 0 OK; 3 BAD_TRACE (unusable file); 2 USAGE; 7 OUTPUT (an export cannot be written);
8 PARTIAL (report printed from the data before damage at the file's tail; the damage goes to stderr).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from rich.console import Console

from arena_trace.analysis.aggregate import BY_CHOICES, Analysis, AnalysisOptions
from arena_trace.analysis.output_files import check_writable
from arena_trace.analysis.report import render_report
from arena_trace.analysis.summary import build_summary
from arena_trace.analysis.text import visible
from arena_trace.errors import ExitCode, OutputError, UsageError

__all__ = ["COMMAND", "AnalysisOptions", "build_summary", "render_report"]


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value < 0 or value != value:
        raise argparse.ArgumentTypeError(f"must be >= 0: {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1: {text!r}")
    return value


def _export_events(analysis: Analysis, path: str, kind: str, force: bool) -> None:
    target = check_writable(path, force)
    events = analysis.trace.events if analysis.mask is None else analysis.trace.events[analysis.mask]
    frame = events.copy()
    frame.insert(frame.columns.get_loc("function") + 1, "function_name",
                 analysis.functions.names[frame["function"].to_numpy().astype(int) & 0xFF])
    try:
        if kind == "csv":
            frame.to_csv(target, index=False)
        else:
            frame.to_parquet(target, index=False, compression="zstd")
    except OSError as error:
        raise OutputError(f"cannot write {path}: {error.strerror or error}") from None


class AnalyzeCommand:
    name = "analyze"
    help = "report on a trace file"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("file", metavar="FILE", help="trace file written by arena-trace -o")
        parser.add_argument("--by", choices=BY_CHOICES, default="path", help="grouping of the main table")
        parser.add_argument("--top", type=_positive_int, default=15, metavar="N", help="rows per table (15)")
        parser.add_argument("--tid", type=int, help="only this thread's streamed calls")
        parser.add_argument("--since", type=_positive_float, metavar="S", help="window start, seconds from start")
        parser.add_argument("--until", type=_positive_float, metavar="S", help="window end, seconds from start")
        parser.add_argument("--json", nargs="?", const="-", metavar="FILE",
                            help="write the arena-trace/summary/1 document to FILE (stdout when no FILE)")
        parser.add_argument("--csv", metavar="FILE", help="export the (selected) raw events as CSV")
        parser.add_argument("--parquet", metavar="FILE", help="export the (selected) raw events as Parquet")
        parser.add_argument("--timeline", action="store_true", help="print allocator activity per interval")
        parser.add_argument("--interval", type=_positive_float, metavar="S", help="timeline interval in seconds")
        parser.add_argument("--plot", metavar="PNG", help="plot the timeline to a PNG file")
        parser.add_argument("--debug-dir", action="append", default=[], metavar="DIR",
                            help="look up debug files by build-id under DIR to name unnamed frames (repeatable)")
        parser.add_argument("--force", action="store_true", help="overwrite existing output files")

    def run(self, arguments: argparse.Namespace) -> int:
        from arena_trace.analysis.trace_reader import read_trace  # keeps `--help` fast

        if arguments.since is not None and arguments.until is not None and arguments.since >= arguments.until:
            raise UsageError("--since must be before --until")
        if arguments.interval is not None and arguments.interval <= 0:
            raise UsageError("--interval must be > 0")
        for directory in arguments.debug_dir:
            if not os.path.isdir(directory):
                raise UsageError(f"--debug-dir {directory}: not a directory")
        options = AnalysisOptions(by=arguments.by, top=arguments.top, tid=arguments.tid, since=arguments.since,
                                  until=arguments.until, interval=arguments.interval)
        trace = read_trace(arguments.file, tuple(arguments.debug_dir))
        analysis = Analysis(trace, options)
        json_to_stdout = arguments.json == "-"
        console = Console(file=sys.stdout, highlight=False, width=None if sys.stdout.isatty() else 160)
        if json_to_stdout:
            sys.stdout.write(json.dumps(build_summary(trace, options, analysis), indent=2) + "\n")
        else:
            render_report(trace, options, console, analysis)
        if arguments.json and not json_to_stdout:
            target = check_writable(arguments.json, arguments.force)
            try:
                target.write_text(json.dumps(build_summary(trace, options, analysis), indent=2) + "\n")
            except OSError as error:
                raise OutputError(f"cannot write {arguments.json}: {error.strerror or error}") from None
        if arguments.csv:
            _export_events(analysis, arguments.csv, "csv", arguments.force)
        if arguments.parquet:
            _export_events(analysis, arguments.parquet, "parquet", arguments.force)
        if arguments.timeline or arguments.plot:
            self._timeline(analysis, arguments, console, json_to_stdout)
        if trace.damage:
            sys.stderr.write("arena-trace: trace damaged, report covers the data before the damage: "
                             + visible("; ".join(trace.damage)) + "\n")
            return ExitCode.PARTIAL
        return ExitCode.OK

    @staticmethod
    def _timeline(analysis: Analysis, arguments: argparse.Namespace, console: Console, quiet: bool) -> None:
        from arena_trace.analysis import timeline

        interval = arguments.interval or timeline.pick_interval(analysis.duration_ns)
        frame = timeline.timeline(analysis, interval)
        if arguments.timeline and not quiet:
            console.print()
            console.print(timeline.timeline_table(frame, interval))
        if arguments.plot:
            target = check_writable(arguments.plot, arguments.force)
            target_info = analysis.trace.metadata.get("target", {})
            # Escape "$": matplotlib would parse a hostile comm as mathtext.
            title = visible(f"arena-trace: pid {target_info.get('pid')} ({target_info.get('comm')})")
            title = title.replace("$", r"\$")
            try:
                timeline.plot(frame, str(target), title)
            except OSError as error:
                raise OutputError(f"cannot write {arguments.plot}: {error.strerror or error}") from None


COMMAND = AnalyzeCommand()
