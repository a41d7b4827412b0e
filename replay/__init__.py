"""Replay historical streams through the same detection logic; scenario generation; evaluation."""
