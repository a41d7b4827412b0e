"""Edges where ctrguard writes: Redis quarantine flags, Kafka topics, Slack."""
