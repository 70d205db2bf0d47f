"""Preset RDU target descriptions (YAML), read by `backend.targets`."""
