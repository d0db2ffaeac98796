"""edge-agent: reads a CNC controller and its sensors, adapts the feed, forwards telemetry."""

__version__ = "0.1.0"
