"""`python -m comfyfleet.localnode …` is `python -m comfyfleet.local.node …`."""

from comfyfleet.local.node.__main__ import main

raise SystemExit(main())
