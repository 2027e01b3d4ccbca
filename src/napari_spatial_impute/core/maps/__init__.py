"""The maps (reference units x spatial cells) as peers: one interface, one registry, the automatic choice."""
