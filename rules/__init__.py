"""Pure rules core: validated rules in, findings and alert-state transitions out.

No I/O, no clock reads, no database access in this package, with two adapters kept
here: the TOML rule loader reads rule files (`rules.loader`, because `usagebot check`
and the engine share its validation), and the config primitives (`rules.config`, the
layer storage, integrations and bot build on) read config and secret files and the
environment. Rule kinds are registered in `rules.kinds`, one detector module each.
"""
