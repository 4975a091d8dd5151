"""`make up` on one machine: the supervisor, the Prefect server process, the local CPU ComfyUI
node (`comfyfleet.local.node`), the embedded fleet (`up`/`down`) and the installation checks
(`doctor`). Above the API in the library's layers: it starts the processes the rest is."""
