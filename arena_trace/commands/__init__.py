"""One module per subcommand, each exposing a ``Command`` (see ``arena_trace.commands.base``)."""
