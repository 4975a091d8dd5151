"""The web face of ComfyFleet and the web process entry (`python -m gradio_app`).

`build_web_app(settings)` is the composition root: the REST gateway (`comfyfleet.api.create_app`,
with the node registry as its fleet) plus the Gradio UI (`gradio_app.ui.build_app`) mounted at
`/`, with Gradio's login checked against ComfyFleet users. The library never imports this package.
"""

from gradio_app.ui import build_app
from gradio_app.web import build_web_app

__all__ = ["build_app", "build_web_app"]
