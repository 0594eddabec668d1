"""The front door: the `ftlab` command (cli), the embedded local stack (stack) and `ftlab doctor`.
It sits on top of the flows and the service clients; nothing below imports it."""
