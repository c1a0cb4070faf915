"""Command-line entry points: argument parsing over the core; nothing imports them."""
