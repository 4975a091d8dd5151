"""The old name of `comfyfleet.local.node`, kept for `python -m comfyfleet.localnode setup`: the
command scripts/comfyui/requirements.txt names. That file's bytes are the cache key of the
ComfyUI venv every checkout shares (var/comfyui), so it does not change for a rename."""
