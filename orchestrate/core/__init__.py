"""Pure logic, no I/O: pipeline files -> agents, staleness, decisions, pictures' drawing."""
