"""Bytewax dataflows. Modules here only wire steps; logic lives beside them or in detectors/."""
