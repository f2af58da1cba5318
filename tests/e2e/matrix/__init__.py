"""One small app, written for ASGI (Starlette), WSGI (Flask) and Django, for the server matrix."""
