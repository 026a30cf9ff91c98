"""ASGI entry point for granian: `api.asgi:app` (the front, then Flask; see api.front)."""

from api.app import create_app
from api.front import Front

app = Front(create_app())
