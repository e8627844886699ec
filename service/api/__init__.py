"""The HTTP API: the only package that imports fastapi or starlette (app factory, routes, /v2, middleware,
problems, auth, docs pages, the web page)."""
