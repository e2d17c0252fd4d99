"""``arena-trace`` entry point: dispatches to subcommands; ``arena-trace -p PID`` is shorthand for ``record``."""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback

from arena_trace.errors import ArenaTraceError, ExitCode

# Subcommand modules, imported lazily so `analyze` never pays for importing bcc.
COMMAND_MODULES = {
    "record": "arena_trace.commands.record",
    "run": "arena_trace.commands.run",
    "probes": "arena_trace.commands.probes",
    "analyze": "arena_trace.commands.analyze",
    "flamegraph": "arena_trace.commands.flamegraph",
    "view": "arena_trace.commands.view",
    "doctor": "arena_trace.commands.doctor",
}
COMMAND_HELP = {
    "record": "trace a running process (same as `arena-trace -p PID`)",
    "run": "start a command and trace it from its first instruction",
    "probes": "list the probes arena-trace would attach to a process",
    "analyze": "report on a trace file",
    "flamegraph": "export a trace as speedscope, folded stacks or pprof",
    "view": "serve a trace in the speedscope viewer on 127.0.0.1",
    "doctor": "check that this machine can trace",
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit code 2, no usage dump
        sys.stderr.write(f"arena-trace: error: {message}\n")
        raise SystemExit(ExitCode.USAGE)


def _load(name: str):
    return importlib.import_module(COMMAND_MODULES[name]).COMMAND


def build_parser(argv: list[str]) -> tuple[argparse.ArgumentParser, list[str]]:
    parser = _Parser(prog="arena-trace", description="eBPF tracing of allocator slow paths, arena lock "
                     "waits and sysmalloc stalls.")
    parser.add_argument("--debug", action="store_true", help="show a traceback on internal errors")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    if argv and argv[0] not in COMMAND_MODULES and argv[0] not in ("-h", "--help", "--debug"):
        argv = ["record", *argv]  # `arena-trace -p PID ...`
    wanted = [argv[0]] if argv and argv[0] in COMMAND_MODULES else list(COMMAND_MODULES)
    for name in COMMAND_MODULES:
        if name in wanted:
            command = _load(name)
            subparser = subparsers.add_parser(name, help=command.help, description=command.help)
            command.add_arguments(subparser)
            subparser.set_defaults(handler=command)
        else:
            subparsers.add_parser(name, help=COMMAND_HELP[name], add_help=False)
    return parser, argv


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        parser, argv = build_parser(argv)
        arguments = parser.parse_args(argv)
        if not getattr(arguments, "handler", None):
            parser.print_help()
            return ExitCode.USAGE
        return int(arguments.handler.run(arguments))
    except ArenaTraceError as error:
        sys.stderr.write(f"arena-trace: {error}\n")
        return int(error.exit_code)
    except KeyboardInterrupt:
        sys.stderr.write("arena-trace: interrupted\n")
        return 130
    except BrokenPipeError:
        return 0
    except Exception as error:  # noqa: BLE001 - last line of defence: one line unless --debug
        if debug:
            traceback.print_exc()
        sys.stderr.write(f"arena-trace: internal error: {type(error).__name__}: {error} (rerun with --debug)\n")
        return ExitCode.INTERNAL


if __name__ == "__main__":
    raise SystemExit(main())
