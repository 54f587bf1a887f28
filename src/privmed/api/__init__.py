"""REST API (FastAPI), API keys and the hash-chained audit log. ``create_app`` builds the app."""
