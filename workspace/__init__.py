"""Tools that operate federations: `make simulate`'s orchestrator and its report."""
