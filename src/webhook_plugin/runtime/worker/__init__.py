"""The delivery worker process that ``serve`` supervises (its engine, apart
from the requests' event loop)."""
