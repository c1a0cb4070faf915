"""Command-line tools that operate on models and data sets; they import from `src`, nothing in `src` imports them."""
