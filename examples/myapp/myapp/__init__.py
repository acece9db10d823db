"""myapp: an example application whose tasks run on celeryd's worker (see examples/README.md)."""

# Returned by the task myapp.tasks.version: shows which code the worker runs after a deploy.
__version__ = "1"
