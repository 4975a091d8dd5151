"""Prefect flows of ComfyFleet: one per generation type, thin layers over the library."""
