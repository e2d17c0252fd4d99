"""``arena-trace view FILE [--port N]``: serves the speedscope web app and one profile on 127.0.0.1.

The app comes from the npm package ``speedscope`` installed by ``scripts/install-speedscope`` (no internet
needed). FILE may be a trace file (exported to speedscope JSON in memory) or anything speedscope opens by
itself (speedscope JSON, folded stacks, gzipped pprof), served as is. The profile URL in the printed link is
relative (``#profileURL=%2Fprofiles%2FNAME``), so the page also works through an SSH tunnel on another port.
"""

from __future__ import annotations

import argparse
import mimetypes
import signal
import threading
import urllib.parse
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from arena_trace.errors import EnvironmentProblem, OutputError, UsageError

BIND_ADDRESS = "127.0.0.1"  # never another interface: a profile reveals symbols and thread names
TRACE_MAGIC = b"ARENATRC"


class ProfileServer:
    """speedscope's release directory at ``/`` and one profile at ``/profiles/NAME``, on 127.0.0.1."""

    def __init__(self, release_directory: Path, profile_name: str, profile: bytes, port: int = 0) -> None:
        self.release_directory = release_directory.resolve()
        self.profile_name = urllib.parse.quote(Path(profile_name).name or "profile")
        self.profile = profile
        handler = type("Handler", (_Handler,), {"owner": self})
        try:
            self.httpd = ThreadingHTTPServer((BIND_ADDRESS, port), handler)
        except OSError as error:
            raise OutputError(f"cannot listen on {BIND_ADDRESS}:{port}: {error.strerror}") from None
        self.httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    @property
    def profile_path(self) -> str:
        return f"/profiles/{self.profile_name}"

    def url(self, view: str | None = None) -> str:
        # No title= parameter: speedscope would show it instead of our profile names.
        fragment = {"profileURL": self.profile_path}
        if view:
            fragment["view"] = view
        return f"http://{BIND_ADDRESS}:{self.port}/#{urllib.parse.urlencode(fragment, quote_via=urllib.parse.quote)}"

    def start(self) -> ProfileServer:
        """Serve from a background thread (tests, live mode)."""
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="speedscope-server", daemon=True)
        self._thread.start()
        return self

    def serve_until_interrupted(self) -> None:
        try:
            self.httpd.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            self.httpd.server_close()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> ProfileServer:
        return self.start()

    def __exit__(self, *exception: object) -> None:
        self.close()


class _Handler(BaseHTTPRequestHandler):
    owner: ProfileServer
    server_version = "arena-trace"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass  # keep the terminal for the URL and errors

    def do_HEAD(self) -> None:  # noqa: N802 - http.server's naming
        self._respond(send_body=False)

    def do_GET(self) -> None:  # noqa: N802
        self._respond(send_body=True)

    def _respond(self, send_body: bool) -> None:
        path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
        if path == urllib.parse.unquote(self.owner.profile_path):
            self._send(self.owner.profile, "application/octet-stream", send_body)
            return
        relative = "index.html" if path in ("", "/") else path.lstrip("/")
        target = (self.owner.release_directory / relative).resolve()
        # Only files inside the release directory: no "..", no symlink escapes.
        if not target.is_relative_to(self.owner.release_directory) or not target.is_file():
            self.send_error(HTTPStatus.NOT_FOUND)
            return
        content_type = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        if target.suffix == ".wasm":
            content_type = "application/wasm"
        self._send(target.read_bytes(), content_type, send_body)

    def _send(self, body: bytes, content_type: str, send_body: bool) -> None:
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if send_body:
            self.wfile.write(body)


def load_profile(path: Path) -> tuple[str, bytes]:
    """(name to serve it under, bytes): trace files are exported to speedscope JSON in memory."""
    from arena_trace.analysis.trace_reader import open_input_file

    with open_input_file(path, "trace or profile file") as stream:
        head = stream.read(len(TRACE_MAGIC))
        if head != TRACE_MAGIC:
            return path.name, head + stream.read()
    from arena_trace.analysis.export_speedscope import build_document, to_json
    from arena_trace.analysis.profiles import NothingToExport
    from arena_trace.analysis.trace_reader import read_trace
    from arena_trace.errors import BadTraceError

    trace = read_trace(path)
    try:
        document = build_document(trace)
    except NothingToExport as error:
        raise BadTraceError(f"{path}: {error}; nothing to show") from None
    stem = path.name[: -len(".atrace")] if path.name.endswith(".atrace") else path.stem
    return f"{stem}.speedscope.json", to_json(document)


def require_speedscope() -> Path:
    from arena_trace.analysis.speedscope_assets import INSTALL_HINT, release_directory

    directory = release_directory()
    if directory is None:
        raise EnvironmentProblem(f"the speedscope web app is not installed: {INSTALL_HINT}")
    return directory


def _interrupt(signal_number: int, frame: object) -> None:
    raise KeyboardInterrupt


class ViewCommand:
    name = "view"
    help = "serve a trace in the speedscope viewer on 127.0.0.1"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("file", type=Path, help="trace file, speedscope JSON, folded stacks or pprof .pb.gz")
        parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: any free port)")

    def run(self, arguments: argparse.Namespace) -> int:
        if not 0 <= arguments.port <= 65535:
            raise UsageError(f"--port {arguments.port} is not a TCP port")
        directory = require_speedscope()
        name, profile = load_profile(arguments.file)
        server = ProfileServer(directory, name, profile, arguments.port)
        # SIGTERM (kill, systemd, a closing SSH session's hang-up) stops it as cleanly as Ctrl-C.
        for stop_signal in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(stop_signal, _interrupt)
        print(f"speedscope is serving {arguments.file} on {BIND_ADDRESS} only; open:\n  {server.url()}")
        print(f"(from another machine: ssh -L {server.port}:127.0.0.1:{server.port} HOST, then open the same URL; "
              "Ctrl-C stops)", flush=True)
        server.serve_until_interrupted()
        print("stopped")
        return 0


COMMAND = ViewCommand()
