"""Cluster launchers (submitit): `python -m jobs.submit ...`."""
