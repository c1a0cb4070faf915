"""Tools that operate federations, above src/ (which never imports them): `simulate/`
(`make simulate`), `al_experiment/` (`make al-experiment`) and `results.py` (`make results`)."""
