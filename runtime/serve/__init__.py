"""Serving with the per-batch decision hook: the adaptive runner (adaptive.py), the
policies that choose a mode (policy.py), the `serve` command (server.py), the demo."""
