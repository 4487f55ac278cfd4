"""Zapora food-ordering API."""

__version__ = "0.1.0"
