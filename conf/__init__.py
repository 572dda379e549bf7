"""Hydra configs, installed as a package so that `pkg://skinderm.conf` resolves everywhere."""
