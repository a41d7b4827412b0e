"""ctrguard: real-time anomaly detection for advertising click-through rate."""

__version__ = "0.1.0"
