"""autoswap: the classic face-swap network (one shared encoder, one decoder per person),
trained as a reproducible DVC + MLflow project."""

__version__ = "0.1.0"
