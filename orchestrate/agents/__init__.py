"""The agent CLIs: how each is invoked headless, and what its log reported."""
