"""The verdict logic of each conformance property, separate from pytest so tests can plant faults."""
