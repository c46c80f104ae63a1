"""modelship: a Kubernetes operator that serves Hugging Face models."""

__version__ = "0.1.0"
