"""Active learning: which unlabeled pool images a site sends to be labeled next."""
