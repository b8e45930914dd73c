"""The `convlab` client commands: thin functions over the HTTP API, imported without Keras."""
