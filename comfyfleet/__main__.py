"""`python -m comfyfleet …` is the `comfyfleet` command."""

from comfyfleet.cli import main

raise SystemExit(main())
