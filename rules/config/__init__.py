"""Configuration primitives shared by the rule files and the service config (the layer under storage).

- problems: the one `Problem` type (file, line, rule id, field, level) and `ConfigError`;
- values: the value readers (numbers, integers, booleans, strings, choices, durations) and how
  messages spell values (TOML in rule files, Python in the service config);
- toml / toml_lines: TOML text -> tables plus the line of every key; syntax errors with line and column;
- tables: `Table` (the keys a table declares) and `setting` (declarative settings dataclasses);
- sections: `Document` / `Section` (the service config's tables: ${ENV} substitution, secrets,
  unknown keys, settings dataclasses read whole);
- secrets / redaction: `Secret`, and the registry that masks every secret in any text.

These modules import nothing of usagebot but each other and the leaf rules.durations, so storage,
integrations and bot can all build on them (rules <- config <- storage <- integrations <- bot).
They live under rules/ because the brief keeps the top level to its listed packages; unlike the
rest of rules/ they read files (the config file, `<key>_file` secrets) and the environment.
"""

from rules.config.problems import ConfigError, Problem
from rules.config.secrets import Secret
from rules.config.sections import Document, Section, document_from_text, load_document
from rules.config.tables import Table, setting, settings_table

__all__ = ["ConfigError", "Document", "Problem", "Secret", "Section", "Table", "document_from_text",
           "load_document", "setting", "settings_table"]
