"""The Slack app (slack-bolt): alert buttons, `/usage`, and how it is served."""
