"""`python -m bench.gateway --port N`: the REST gateway alone, served by uvicorn, for B3.

It reads the control plane's `COMFYFLEET_CONFIG` like every other ComfyFleet process and runs as
its own process, so its memory counts apart from the benchmark driver's.
"""

from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.gateway")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    import uvicorn

    from comfyfleet.api import create_app
    from comfyfleet.settings import get_settings

    app = create_app(get_settings())
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
