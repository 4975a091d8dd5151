"""`python -m comfyfleet.fleet`: run the fleet service (monitor, dispatcher, lease watcher)."""

from comfyfleet.fleet.service import main

main()
