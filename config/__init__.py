"""The embedded default settings (``default.yaml``), installed as ``ctrguard.defaults``."""
