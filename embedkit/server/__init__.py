"""`embedkit serve`: OpenAI-compatible embeddings and generation over HTTP, and search over the store."""

from embedkit.server.app import create_app
from embedkit.server.config import ServerConfig

__all__ = ["ServerConfig", "create_app"]
