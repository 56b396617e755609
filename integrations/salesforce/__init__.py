"""Salesforce adapter: usage-health fields on Account records (diff-only, batched) and Tasks.

config.py (the [salesforce] table), client.py (simple-salesforce with re-login, retries and
API-limit tracking), mapping.py (health -> field values), writer.py (sObject Collections and
Bulk API 2.0 writes with per-record results), tasks.py (Task records per alert episode).
"""
