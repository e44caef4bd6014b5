"""The shared contract: schemas, statuses, errors, task names, settings, the Celery app."""
__version__ = "0.1.0"
