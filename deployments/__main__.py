"""`python -m deployments [apply]`: apply the configured fleet (comfyfleet.yaml, or the file in
COMFYFLEET_CONFIG / --config) to the Prefect server at `prefect.api_url`: the block type, the
control pool, each node's block, pool, queues and `<flow>/<node>` deployments, then prefect.yaml
(`prefect --no-prompt deploy --all`: the routed `<flow>/fleet`, `batch/fleet` and the scheduled
batches). Idempotent; `comfyfleet up` runs it."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deployments", description=__doc__)
    parser.add_argument("command", nargs="?", choices=["apply"], default="apply")
    parser.add_argument("--config", metavar="PATH", help="the comfyfleet.yaml to apply")
    args = parser.parse_args(argv)
    if args.config:
        os.environ["COMFYFLEET_CONFIG"] = args.config
    from comfyfleet.logs import configure_logging
    from comfyfleet.settings import format_errors, get_settings

    try:
        settings = get_settings()
    except Exception as exc:
        from comfyfleet.settings import config_path

        print(format_errors(exc, config_path()), file=sys.stderr)
        return 1
    configure_logging(settings)
    os.environ.setdefault("PREFECT_API_URL", settings.prefect.api_url)
    from deployments import DeployError, apply_fleet

    try:
        asyncio.run(apply_fleet(settings.nodes, settings=settings))
    except DeployError as exc:
        print(exc, file=sys.stderr)
        return 1
    for node in settings.nodes:
        print(f"node {node.id} → pool comfyui-{node.id}, deployments */{node.id}")
    print("prefect.yaml → control pool comfyfleet-control, deployments */fleet, batch/*")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
