"""connector-runtime: call function connectors on a schedule and sync their pages."""

__version__ = "0.1.0"
