"""`python -m gradio_app`: the web process (REST gateway + Gradio UI) on `gateway.host:port`."""

from __future__ import annotations

from comfyfleet.logs import configure_logging
from comfyfleet.settings import get_settings
from gradio_app.web import serve


def main() -> None:
    configure_logging()
    serve(get_settings())


if __name__ == "__main__":
    main()
