"""Single-molecule localisation: simulated movies, the DECODE-style network, its training and metrics."""
