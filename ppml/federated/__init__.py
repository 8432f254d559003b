"""Federated learning on Flower: sites, per-site preparation, the federation's processes and accounting."""
