"""The HTTP API. ``create_app`` builds it; ``batchrender api`` serves it."""
from producer.api.app import create_app
from producer.api.routers.jobs import MAX_WAIT_S

__all__ = ["MAX_WAIT_S", "create_app"]
