"""Where open pages' ``<view>_update`` specs are registered, shared by every Django process."""

from django.db import models


class PageGroup(models.Model):
    """Pages of one user that asked for the same spec: they share a channel.

    Written when such a page renders; read when a model instance changes, to
    find the channels to publish to and how to serialize for each.
    """

    channel = models.CharField(max_length=200, unique=True)
    name = models.CharField(max_length=100)
    model = models.CharField(max_length=200, db_index=True)
    params = models.JSONField(default=dict)
    data = models.JSONField(null=True)
    serializer = models.CharField(max_length=300, blank=True)
    user_id = models.CharField(max_length=64, blank=True)
    expires = models.DateTimeField(db_index=True)

    class Meta:
        indexes = [models.Index(fields=["model", "expires"])]

    def __str__(self) -> str:
        return f"{self.channel} ({self.model} {self.params})"
