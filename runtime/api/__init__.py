"""The OJS HTTP binding as a plain ASGI application."""
