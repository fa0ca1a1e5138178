"""Parley's shared contract: event and subject registries, envelopes, schemas, auth."""
