"""livemigrate's engine: plain Python, no Prefect."""

__version__ = "0.1.0"
