"""Benchmarks of p2p-exchange. ``python -m bench`` runs them (see ``bench.__main__``)."""
