"""The ``<view>_update`` convention: specs, the page registry, matching and serialization.

A view ``hello`` may have a module-level ``hello_update(request)`` returning
specs such as::

    {"name": "username_change", "model": User,
     "params": {"pk": request.user.pk},
     "data": {"username": "object.username"}}

When the page renders, each spec becomes a *group*: the pages of one user that
asked for the same spec share one private channel, registered in the database
(so every Django process sees it). When an instance of the model is saved or
deleted, after the transaction commits, the process that changed it finds the
groups of that model whose ``params`` match the changed row, serializes the row
once per group (so for that group's user only) and publishes everything in one
AMP call. The push server keeps it in history, so pages catch up as with any
update.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AnonymousUser
from django.core.exceptions import ImproperlyConfigured
from django.core.serializers.json import DjangoJSONEncoder
from django.db import models, transaction
from django.forms.models import model_to_dict
from django.http import HttpRequest
from django.urls import resolve, reverse
from django.utils import timezone
from django.utils.module_loading import import_string

from django_adapter.conf import settings
from django_adapter.models import PageGroup
from twistedpush.access import NAME_RE, NAME_RULE

ATTRIBUTE_ROOT = "object"


@dataclass(frozen=True)
class Spec:
    """A validated spec: what a page wants to hear about, and how to serialize it."""

    name: str
    model: type[models.Model]
    params: dict[str, Any]
    data: dict[str, Any] | None = None
    serializer: str = ""

    @property
    def label(self) -> str:
        return self.model._meta.label_lower


def parse_spec(raw: Any, where: str) -> Spec:
    """Check one spec dict and return it as a Spec, or raise ImproperlyConfigured."""
    if not isinstance(raw, dict):
        raise ImproperlyConfigured(f"{where}: a spec must be a dict, got {raw!r}")
    unknown = set(raw) - {"name", "model", "params", "data", "serializer"}
    if unknown:
        raise ImproperlyConfigured(f"{where}: unknown spec keys {sorted(unknown)}")
    name = raw.get("name")
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise ImproperlyConfigured(f"{where}: 'name' must be {NAME_RULE}, got {name!r}")
    model = raw.get("model")
    if not (isinstance(model, type) and issubclass(model, models.Model)):
        raise ImproperlyConfigured(f"{where}: 'model' must be a model class, got {model!r}")
    params = raw.get("params", {})
    if not isinstance(params, dict):
        raise ImproperlyConfigured(f"{where}: 'params' must be a dict of ORM lookups")
    try:
        params = json.loads(json.dumps(params, cls=DjangoJSONEncoder))
    except (TypeError, ValueError) as e:
        raise ImproperlyConfigured(f"{where}: 'params' values must be plain values: {e}") from None
    data = raw.get("data")
    if data is not None and not isinstance(data, dict):
        raise ImproperlyConfigured(f"{where}: 'data' must be a dict")
    serializer = raw.get("serializer", "")
    if callable(serializer):
        path = f"{serializer.__module__}.{serializer.__qualname__}"
        try:
            found = import_string(path)
        except ImportError:
            found = None
        if found is not serializer:
            raise ImproperlyConfigured(
                f"{where}: a serializer function must be defined at module level ({path})"
            )
        serializer = path
    elif serializer:
        if not isinstance(serializer, str):
            raise ImproperlyConfigured(f"{where}: 'serializer' must be a function or view name")
        serializer = "view:" + serializer
    if data is not None and serializer.startswith("view:"):
        raise ImproperlyConfigured(f"{where}: give 'data' or a view serializer, not both")
    return Spec(name, model, params, data, serializer)


def update_function(view: Callable) -> Callable | None:
    """The ``<view>_update`` function beside ``view`` (function or class-based), if any."""
    target = getattr(view, "view_class", view)
    module = sys.modules.get(getattr(target, "__module__", ""), None)
    name = getattr(target, "__name__", None)
    if module is None or name is None:
        return None
    return getattr(module, f"{name}_update", None)


def page_specs(request: HttpRequest, view: Callable) -> list[Spec]:
    """Every spec of this page: its view's ``<view>_update`` plus SERVERPUSH_GLOBALS."""
    sources: list[tuple[str, Callable]] = []
    found = update_function(view)
    if found is not None:
        sources.append((f"{found.__module__}.{found.__name__}", found))
    for path in settings.GLOBALS:
        sources.append((path, import_string(path)))
    specs = []
    for where, function in sources:
        for raw in function(request) or ():
            specs.append(parse_spec(raw, where))
    return specs


def user_key(user: Any) -> str:
    return "" if user is None or not user.is_authenticated else str(user.pk)


def group_channel(spec: Spec, user: str) -> str:
    identity = json.dumps(
        [spec.name, spec.label, spec.params, spec.data, spec.serializer, user], sort_keys=True
    )
    digest = hashlib.sha256(identity.encode()).hexdigest()[:24]
    return f"sp.{spec.name}.{digest}"


def register(specs: Iterable[Spec], user: Any) -> list[tuple[str, str]]:
    """Record this page's groups (before the page reads anything); return (channel, name)."""
    key = user_key(user)
    wanted = {group_channel(spec, key): spec for spec in specs}
    if not wanted:
        return []
    now = timezone.now()
    ttl = timedelta(seconds=int(settings.TOKEN_TTL))
    fresh_until = now + ttl / 2
    known = dict(
        PageGroup.objects.filter(channel__in=list(wanted)).values_list("channel", "expires")
    )
    stale = [channel for channel, expires in known.items() if expires < fresh_until]
    if stale:
        PageGroup.objects.filter(channel__in=stale).update(expires=now + ttl)
    missing = [
        PageGroup(
            channel=channel,
            name=spec.name,
            model=spec.label,
            params=spec.params,
            data=spec.data,
            serializer=spec.serializer,
            user_id=key,
            expires=now + ttl,
        )
        for channel, spec in wanted.items()
        if channel not in known
    ]
    if missing:
        PageGroup.objects.filter(expires__lt=now).delete()
        PageGroup.objects.bulk_create(missing, ignore_conflicts=True)
    return [(channel, spec.name) for channel, spec in wanted.items()]


# Matching a changed row against a group's params


def _python_match(instance: models.Model, params: dict[str, Any]) -> bool | None:
    """Decide plain equality lookups in Python; None when the database must decide."""
    meta = instance._meta
    for lookup, expected in params.items():
        field_name = lookup.removesuffix("__exact")
        if "__" in field_name:
            return None
        if field_name == "pk":
            field = meta.pk
        else:
            try:
                field = meta.get_field(field_name)
            except Exception:
                return None
        if not getattr(field, "concrete", False) or field.many_to_many:
            return None
        try:
            value = field.to_python(expected) if expected is not None else None
        except Exception:
            return False
        if getattr(instance, field.attname) != value:
            return False
    return True


def matching_groups(instance: models.Model) -> list[PageGroup]:
    """Groups whose params select ``instance`` (its row as it is now in the database)."""
    groups = PageGroup.objects.filter(model=instance._meta.label_lower, expires__gt=timezone.now())
    matched = []
    manager = type(instance)._default_manager
    for group in groups:
        verdict = _python_match(instance, group.params)
        if verdict is None:
            verdict = manager.filter(pk=instance.pk, **group.params).exists()
        if verdict:
            matched.append(group)
    return matched


# Serializing for one group's user


def _resolve(path: str, instance: models.Model) -> Any:
    value: Any = instance
    for part in path.split(".")[1:]:
        value = getattr(value, part)
        if callable(value) and not isinstance(value, models.Model):
            value = value()
    return value


def resolve_data(data: dict[str, Any], instance: models.Model) -> dict[str, Any]:
    """``"object.a.b"`` values become the instance's attributes; others stay as given."""
    return {
        key: _resolve(value, instance)
        if isinstance(value, str)
        and (value == ATTRIBUTE_ROOT or value.startswith(ATTRIBUTE_ROOT + "."))
        else value
        for key, value in data.items()
    }


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, cls=DjangoJSONEncoder))


def serialize(group: PageGroup, instance: models.Model, user: Any) -> Any:
    request = HttpRequest()
    request.method = "GET"
    request.user = user
    data = resolve_data(group.data, instance) if group.data is not None else None
    if group.serializer.startswith("view:"):
        path = reverse(group.serializer.removeprefix("view:"))
        response = resolve(path).func(request, user=user, data=instance)
        body = response.content.decode(response.charset or "utf-8")
        try:
            return json.loads(body)
        except ValueError:
            return body
    if group.serializer:
        return _jsonable(import_string(group.serializer)(request, instance, data))
    if data is not None:
        return _jsonable(data)
    return _jsonable(model_to_dict(instance))


def _users(groups: list[PageGroup]) -> dict[str, Any]:
    ids = {g.user_id for g in groups if g.user_id}
    users: dict[str, Any] = {"": AnonymousUser()}
    if ids:
        for user in get_user_model()._default_manager.filter(pk__in=ids):
            users[str(user.pk)] = user
    return users


def publications(
    instance: models.Model, groups: list[PageGroup], deleted: bool = False
) -> list[tuple[str, Any, str]]:
    """One (channel, data, name) per matched group, serialized for that group's user."""
    users = _users(groups)
    out = []
    for group in groups:
        user = users.get(group.user_id)
        if user is None:
            continue  # the user is gone: nobody may see this
        data = serialize(group, instance, user)
        if deleted and isinstance(data, dict):
            data = {**data, "deleted": True}
        out.append((group.channel, data, group.name))
    return out


# Model signals: publish after commit


def _publish(items: list[tuple[str, Any, str]]) -> None:
    from django_adapter.client import get_client

    if items:
        get_client().send_updates(items)


_UNWATCHED_APPS = frozenset({"sessions", "contenttypes", "migrations", "admin"})


def _ignored(sender: type[models.Model]) -> bool:
    """The registry itself, Django's bookkeeping, and migrations' historical models."""
    return (
        sender is PageGroup
        or sender.__module__ == "__fake__"
        or sender._meta.app_label in _UNWATCHED_APPS
    )


def instance_saved(sender: type, instance: models.Model, raw: bool = False, **kwargs: Any) -> None:
    """After commit: match the row as committed, serialize, publish. A push server
    outage must not fail the save, so errors are logged (robust), not raised."""
    if raw or _ignored(sender):
        return
    transaction.on_commit(
        lambda: _publish(publications(instance, matching_groups(instance))),
        kwargs.get("using"),
        robust=True,
    )


def instance_deleting(sender: type, instance: models.Model, **kwargs: Any) -> None:
    """Match while the row still exists; it is published once the delete commits."""
    if _ignored(sender):
        return
    groups = matching_groups(instance)
    if groups:
        instance._serverpush_groups = groups


def instance_deleted(sender: type, instance: models.Model, **kwargs: Any) -> None:
    groups = getattr(instance, "_serverpush_groups", None)
    if groups:
        items = publications(instance, groups, deleted=True)  # while the pk is still set
        transaction.on_commit(lambda: _publish(items), kwargs.get("using"), robust=True)
