"""The Django Channels peer: WebSocket groups fed by an HTTP publish endpoint.

daphne -b 127.0.0.1 -p PORT bench.channels_app:application   (REDIS_URL in the environment)
"""

import os

import django
from django.conf import settings

settings.configure(
    DEBUG=False,
    SECRET_KEY="bench",
    INSTALLED_APPS=["channels"],
    CHANNEL_LAYERS={
        "default": {
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            "CONFIG": {"hosts": [os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")]},
        }
    },
)
django.setup()

from channels.generic.websocket import AsyncWebsocketConsumer  # noqa: E402
from channels.layers import get_channel_layer  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.urls import re_path  # noqa: E402


class Subscriber(AsyncWebsocketConsumer):
    """Joins the groups named in its URL; forwards each group message as a text frame."""

    async def connect(self):
        self.groups_joined = self.scope["url_route"]["kwargs"]["channels"].split("/")
        for group in self.groups_joined:
            await self.channel_layer.group_add(group, self.channel_name)
        await self.accept()

    async def disconnect(self, code):
        for group in self.groups_joined:
            await self.channel_layer.group_discard(group, self.channel_name)

    async def push(self, event):
        await self.send(text_data=event["text"])


async def publish(scope, receive, send):
    """POST /pub/<group>: the body goes to every member of the group."""
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    group = scope["path"].rsplit("/", 1)[1]
    await get_channel_layer().group_send(group, {"type": "push", "text": body.decode()})
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", b"2")]})  # fmt: skip
    await send({"type": "http.response.body", "body": b"ok"})


application = ProtocolTypeRouter(
    {
        "http": publish,
        "websocket": URLRouter([re_path(r"^sub/(?P<channels>[\w./]+)$", Subscriber.as_asgi())]),
    }
)
