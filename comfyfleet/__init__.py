"""ComfyFleet: run ComfyUI jobs on a fleet of plain ComfyUI nodes, with Prefect as the engine.

The library, in layers, each importing only the ones below it: settings and logs; the ComfyUI
client and the job store; the workflow catalog and identity (auth); jobs; the fleet and the
worker; the REST gateway (api); local operations (`make up`); the CLI. It never imports the
Prefect layer (flows/, blocks/, deployments/) or the UI (gradio_app/); the README's
"Architecture" says more.
"""

from comfyfleet.settings import NodeConfig, Settings, get_settings

__version__ = "0.1.0"

__all__ = ["NodeConfig", "Settings", "__version__", "get_settings"]
