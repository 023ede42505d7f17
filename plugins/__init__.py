"""The built-in plugins, one package each; each is registered by entry point like any other."""
