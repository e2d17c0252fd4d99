from arena_trace.cli import main

raise SystemExit(main())
