"""`python -m pipeline.tools.docs` (what `make docs` and `make docs-run` call)."""

from pipeline.tools.docs import main

raise SystemExit(main())
