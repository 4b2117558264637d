"""The HTTP side of bardlet: an OpenAI-compatible API and a chat page (no torch here)."""

from bardlet.server.app import create_app

__all__ = ["create_app"]
