from django.conf import settings
from django.db import models


class Counter(models.Model):
    """The seed's page counter: one row, incremented by each visit of /."""

    value = models.IntegerField(default=0)


class Score(models.Model):
    """Each demo user's own number: only its owner's pages show it."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE)
    points = models.IntegerField(default=0)


class ChatMessage(models.Model):
    author = models.CharField(max_length=150)
    text = models.CharField(max_length=500)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-id"]
