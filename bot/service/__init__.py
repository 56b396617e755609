"""The service runtime: `usagebot serve` (runner), its jobs (scheduler, polling, evaluation, pipeline,
freshness, reload), leader election, HTTP server, metrics and logs."""
