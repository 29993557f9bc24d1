"""Probes of the loss landscape around the recorded trajectories, beyond the paper: one module per
probe, listed in ``registry``."""
