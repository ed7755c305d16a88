"""The notification gateway: Socket.IO replicas on aiohttp that act as one through Redis.

`gateway.app.create_app(settings)` builds a replica; `python -m gateway` runs one.
"""
