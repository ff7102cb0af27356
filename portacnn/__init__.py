"""portacnn: a readable CNN library written once against the Python array API."""

__version__ = "0.1.0"
