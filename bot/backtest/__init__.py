"""`usagebot backtest`: the replay (run), its HTML report (report) and outcome labels (labels)."""
