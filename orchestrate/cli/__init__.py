"""The front doors: the doit tasks and commands, init, the MCP server, and what they print."""
