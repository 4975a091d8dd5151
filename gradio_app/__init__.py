"""The web process: the REST gateway with the Gradio UI mounted at `/`."""
