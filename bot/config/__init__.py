"""The service config file: every section (app) and the [health] table (health)."""
