"""Usage charts: one typed description (model.Chart), drawn as inline SVG (web UI, backtest report)
and as a PNG (Slack), and built from stored usage, rules and episodes (build)."""
