"""Example third-party robust-distill plugin (see plugin.py)."""
