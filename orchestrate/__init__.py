"""orchestrate: a Make-style build tool for AI-agent pipelines, built on doit."""

__version__ = "0.1.0"
