"""ComfyFleet: run ComfyUI jobs on a fleet of plain ComfyUI nodes, with Prefect as the engine.

The library: settings, the ComfyUI client, the workflow catalog, the output store, the worker.
It never imports the Prefect flows (flows/) or the UI (gradio_app/).
"""

from comfyfleet.settings import NodeConfig, Settings, get_settings

__version__ = "0.1.0"

__all__ = ["NodeConfig", "Settings", "__version__", "get_settings"]
