"""The API's routes by role; ``server.create_app`` includes them. Each reads the app's shared parts
(store, registry, metrics, settings) from ``request.app.state``."""
