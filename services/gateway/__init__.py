"""Escalon's HTTP gateway: the OpenAI-compatible API (/v1/chat/completions, /v1/models) as a thin client of the
Router API, and the operator's page (/ops). Start it with `python -m escalon.gateway`; `create_app` in app.py."""
