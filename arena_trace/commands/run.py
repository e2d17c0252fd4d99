"""`arena-trace run [options] -- COMMAND [ARGS...]`: start a command and trace it from its first instruction.

The command's stdin, stdout and stderr are its own; the report goes to stderr so the command's stdout
stays exactly what the command printed; arena-trace exits with the command's exit status.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal

from arena_trace.commands.recording import add_recording_arguments, finish, progress_printer, recording_options
from arena_trace.errors import ExitCode


class RunCommand:
    name = "run"
    help = "start a command and trace it from its first instruction"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_recording_arguments(parser)
        parser.add_argument("command", nargs=argparse.REMAINDER, metavar="-- COMMAND [ARGS...]",
                            help="the command to run and trace")

    def run(self, arguments: argparse.Namespace) -> int:
        from arena_trace.tracer.launcher import find_executable, libraries_of, start_paused
        from arena_trace.tracer.probe_plan import allocators_from_libraries, plan_probes
        from arena_trace.tracer.session import Recording, Target

        command = list(arguments.command)
        if command[:1] == ["--"]:
            command = command[1:]
        options = recording_options(arguments)
        executable = find_executable(command)
        allocators = allocators_from_libraries(libraries_of(executable), arguments.allocator,
                                               options.debug_directories)
        progress = progress_printer(arguments)
        paused = start_paused(command)
        released = False

        def release() -> None:
            nonlocal released
            paused.release()
            released = True

        try:
            plan = plan_probes(paused.pid, allocators, full=arguments.full or arguments.full_events,
                           stream_full=arguments.full_events)
            recording = Recording(plan, Target(paused.pid, exit_status=paused.exit_status), options, progress)
            recording.command_description = {"comm": os.path.basename(executable)[:15], "cmdline": command}
            trace = recording.run(on_attached=release, on_resolver=lambda resolver: setattr(
                paused.holder, "on_exit", lambda: resolver.refresh_maps(force=True)))
        finally:
            if not released:
                paused.abandon()
        # Ctrl-C reaches the command too (same process group); wait for it without dying ourselves.
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            status = paused.wait()
        finally:
            signal.signal(signal.SIGINT, previous)
        trace.footer["target_exit_status"] = status
        finish(trace, arguments, to_stderr=True)
        with contextlib.suppress(ValueError):
            return status if status >= 0 else 128 - status
        return ExitCode.OK


COMMAND = RunCommand()
