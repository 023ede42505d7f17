"""FAKES for unit tests only: never enable them next to the real channeld or a chain backend."""
