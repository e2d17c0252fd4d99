"""``arena-trace flamegraph FILE --format speedscope|folded|pprof``: flamegraph exports of a trace file.

``export()`` is the entry point live mode uses too (``arena-trace -p PID --speedscope OUT``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from arena_trace.errors import BadTraceError, ExitCode, UsageError

FORMATS = ("speedscope", "folded", "pprof")
METRICS = ("allocator-time", "lock-wait", "grow-time", "heap-growth", "calls")
_SUFFIXES = {"speedscope": ".speedscope.json", "folded": ".folded", "pprof": ".pb.gz"}
NO_STACKS_NOTE = ("note: the trace has no stacks (recorded without stack capture, or every capture failed); "
                  "the flamegraph shows allocator call paths under \"[no stack]\"")


def default_output(trace_path: Path, output_format: str) -> Path:
    name = trace_path.name
    stem = name[: -len(".atrace")] if name.endswith(".atrace") else trace_path.stem
    return trace_path.with_name(stem + _SUFFIXES[output_format])


def export(trace, output_format: str, path: str | Path, metric=None, force: bool = False) -> list[Path]:
    """Write ``trace`` (a tracer.trace_format.Trace) as ``output_format`` to ``path``; returns the files written.

    ``metric`` is a metric name (``lock-wait``...), an ``analysis.profiles.Metric`` or None for all metrics
    (speedscope/pprof: one file holding all; folded: one file per metric, ``<stem>.<metric>.folded``).
    Raises ``analysis.profiles.NothingToExport`` for a trace with no allocator activity (nothing is written),
    ``arena_trace.errors.OutputError`` when the output exists and ``force`` is false or cannot be written.
    """
    from arena_trace.analysis import export_folded, export_pprof, export_speedscope
    from arena_trace.analysis.profiles import Metric

    chosen = Metric.from_cli(metric) if isinstance(metric, str) else metric
    path = Path(path)
    if output_format == "speedscope":
        export_speedscope.export(trace, path, chosen, force)
        return [path]
    if output_format == "pprof":
        export_pprof.export(trace, path, chosen, force)
        return [path]
    if output_format == "folded":
        return export_folded.export(trace, path, chosen, force)
    raise UsageError(f"unknown format {output_format!r} (choose from {', '.join(FORMATS)})")


class FlamegraphCommand:
    name = "flamegraph"
    help = "export a trace as speedscope, folded stacks or pprof"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("file", type=Path, help="trace file written by `arena-trace ... -o FILE`")
        parser.add_argument("--format", choices=FORMATS, default="speedscope", help="output format "
                            "(default: speedscope)")
        parser.add_argument("-o", "--output", type=Path, help="output file (default: FILE with the format's "
                            "suffix; folded without --metric writes one file per metric beside it)")
        parser.add_argument("--metric", choices=METRICS, help="export only this metric (default: all)")
        parser.add_argument("--force", action="store_true", help="overwrite existing output files")

    def run(self, arguments: argparse.Namespace) -> int:
        from arena_trace.analysis.output_files import check_writable
        from arena_trace.analysis.profiles import NothingToExport, has_any_stack
        from arena_trace.analysis.trace_reader import read_trace

        output = arguments.output or default_output(arguments.file, arguments.format)
        if arguments.format != "folded" or arguments.metric:
            check_writable(output, arguments.force)  # before the (possibly long) read
        trace = read_trace(arguments.file)
        for problem in trace.damage:
            sys.stderr.write(f"arena-trace: warning: {problem}\n")
        if not has_any_stack(trace) and not (trace.events.empty and trace.aggregates.empty):
            sys.stderr.write(NO_STACKS_NOTE + "\n")
        try:
            written = export(trace, arguments.format, output, arguments.metric, arguments.force)
        except NothingToExport as error:
            raise BadTraceError(f"{arguments.file}: {error}; nothing was written") from None
        for path in written:
            print(f"wrote {path}")
        return ExitCode.PARTIAL if trace.damage else ExitCode.OK


COMMAND = FlamegraphCommand()
