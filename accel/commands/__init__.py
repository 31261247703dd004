"""CLI sub-commands, one module each (see accel/cli.py)."""
