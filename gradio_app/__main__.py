"""`python -m gradio_app`: the web process (REST gateway + Gradio UI) on `gateway.host:port`."""

from __future__ import annotations

import logging

from comfyfleet.settings import get_settings
from gradio_app.web import serve


def main() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    serve(get_settings())


if __name__ == "__main__":
    main()
