"""celeryd: a packaged, hardened Celery worker, its client and broker provisioning."""

__version__ = "0.8.0"
