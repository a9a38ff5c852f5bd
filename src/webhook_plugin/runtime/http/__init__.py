"""The front door: the HTTP server (uvicorn, bounded), its connection and
request limits, the gate that sheds load, and the ASGI guards of the API
(what a browser may reach, the token, body size and body time)."""
