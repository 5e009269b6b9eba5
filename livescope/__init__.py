"""livescope: deep-learning image restoration inside the acquisition loop."""
__version__ = "0.1.0"
