"""CRM sync: usage health -> Salesforce fields and Tasks (sync), through the outbox (delivery); preview."""
