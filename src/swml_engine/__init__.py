"""swml-engine: a self-hosted engine that answers calls and runs SWML scripts."""

__version__ = "0.1.0"
