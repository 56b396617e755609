"""Pure rules core: validated rules in, findings and alert-state transitions out.

No I/O, no clock reads, no database access in this package (the TOML loader
reads files only through `rules.loader`, which is the one adapter kept here
because `usagebot check` and the engine share its validation).
"""
