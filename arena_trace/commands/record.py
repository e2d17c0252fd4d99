"""`arena-trace -p PID` (also `arena-trace record -p PID`): trace a running process."""

from __future__ import annotations

import argparse

from arena_trace.commands.recording import add_recording_arguments, finish, progress_printer, recording_options
from arena_trace.errors import ExitCode, UsageError


def _pid(text: str) -> int:
    try:
        pid = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid PID {text!r}: expected a process id such as 4242") from None
    if pid <= 0:
        raise argparse.ArgumentTypeError(f"invalid PID {text}: must be a positive process id")
    return pid


class RecordCommand:
    name = "record"
    help = "trace a running process (same as `arena-trace -p PID`)"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        # Not required=True: argparse would then answer `arena-trace --bogus` with "-p is required" instead
        # of naming the unknown option; run() checks it after the unknown options were reported.
        parser.add_argument("-p", "--pid", type=_pid, help="process to trace (all its threads; required)")
        add_recording_arguments(parser)

    def run(self, arguments: argparse.Namespace) -> int:
        from arena_trace.tracer.probe_plan import detect_allocators, plan_probes
        from arena_trace.tracer.session import Recording, Target, check_target

        if arguments.pid is None:
            raise UsageError("the following arguments are required: -p/--pid")
        options = recording_options(arguments)
        check_target(arguments.pid)
        progress = progress_printer(arguments)
        allocators = detect_allocators(arguments.pid, arguments.allocator, options.debug_directories)
        plan = plan_probes(arguments.pid, allocators, full=arguments.full or arguments.full_events,
                           stream_full=arguments.full_events)
        recording = Recording(plan, Target(arguments.pid), options, progress)
        trace = recording.run()
        finish(trace, arguments)
        return ExitCode.OK


COMMAND = RecordCommand()
