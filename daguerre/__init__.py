"""Daguerre: restoration pipeline for digitized photographic archives."""

__version__ = "0.1.0"
