"""Node profiles (TOML). `default.toml` is embedded: `lnp-host run` uses it when no --profile is given."""
