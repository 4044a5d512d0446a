"""The ``<view>_update`` convention: specs, the page registry, matching and serialization.

A view ``hello`` may have a module-level ``hello_update(request, *args, **kwargs)``
(called with the view's own arguments) returning specs such as::

    {"name": "username_change", "model": User,
     "params": {"pk": request.user.pk},
     "data": {"username": "object.username"}}

When the page renders, each spec becomes a *group*: the pages of one user that
asked for the same spec share one private channel, registered in the database
(so every Django process sees it), named by an HMAC under the token secret (so
that nobody can name it without a token, and no public glob may match it). When
an instance of the model is saved or deleted, after the transaction commits,
the process that changed it finds the groups of that model whose ``params``
match the changed row, serializes the row once per group (so for that group's
user only) and publishes everything in one AMP call. The push server keeps it
in history, so pages catch up as with any update.
"""

from __future__ import annotations

import hashlib
import hmac
import inspect
import json
import logging
import string
import sys
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import timedelta
from fnmatch import fnmatchcase
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AnonymousUser
from django.core.exceptions import ImproperlyConfigured
from django.core.serializers.json import DjangoJSONEncoder
from django.db import models, transaction
from django.http import HttpRequest
from django.urls import resolve, reverse
from django.utils import timezone
from django.utils.module_loading import import_string

from django_adapter import client
from django_adapter.conf import settings
from django_adapter.models import PageGroup
from twistedpush.access import NAME_RE, NAME_RULE

log = logging.getLogger("django_adapter")

ATTRIBUTE_ROOT = "object"
GROUP_PREFIX = "sp."
DIGEST_CHARS = 24
"""A page group's channel is ``sp.<name>.<24 hex digits>``."""


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
        params = _jsonable(params)
    except (TypeError, ValueError) as e:
        raise ImproperlyConfigured(f"{where}: 'params' values must be plain values: {e}") from None
    data = raw.get("data")
    if data is not None and not isinstance(data, dict):
        raise ImproperlyConfigured(f"{where}: 'data' must be a dict")
    for key, value in (data or {}).items():
        # A typo here would otherwise show only when a row is saved, in the saving process.
        if isinstance(value, str) and value.startswith(ATTRIBUTE_ROOT + "."):
            attribute = value.split(".")[1]
            if not hasattr(model, attribute):
                raise ImproperlyConfigured(
                    f"{where}: 'data' {key!r}: {model.__name__} has no {attribute!r} (in {value!r})"
                )
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
    if data is None and not serializer:
        raise ImproperlyConfigured(
            f"{where}: spec {name!r} has neither 'data' nor 'serializer': say what the "
            "browser gets, e.g. 'data': {'value': 'object.value'} (a row's fields are "
            "never sent whole: they may hold password hashes and e-mail addresses)"
        )
    return Spec(name, model, params, data, serializer)


def update_function(view: Callable) -> Callable | None:
    """The ``<view>_update`` function beside ``view`` (function or class-based), if any."""
    target = getattr(view, "view_class", view)
    module = sys.modules.get(getattr(target, "__module__", ""), None)
    name = getattr(target, "__name__", None)
    if module is None or name is None:
        return None
    return getattr(module, f"{name}_update", None)


def view_specs(request: HttpRequest, view: Callable, args: Any, kwargs: Any) -> list[Spec]:
    """The specs of the view's ``<view>_update``, called with the view's arguments."""
    function = update_function(view)
    if function is None:
        return []
    where = f"{function.__module__}.{function.__name__}"
    try:
        inspect.signature(function).bind(request, *args, **kwargs)
    except TypeError as e:
        raise ImproperlyConfigured(
            f"{where} must take the view's arguments, as the view does: "
            f"{where}(request, *{tuple(args)!r}, **{kwargs!r}) fails: {e}"
        ) from None
    return _parsed(function(request, *args, **kwargs), where)


def global_specs(request: HttpRequest) -> list[Spec]:
    """The specs of SERVERPUSH_GLOBALS, added to every page that takes a position."""
    return [
        spec for path in settings.GLOBALS for spec in _parsed(import_string(path)(request), path)
    ]


def _parsed(raws: Iterable[Any] | None, where: str) -> list[Spec]:
    return [parse_spec(raw, where) for raw in raws or ()]


def user_key(user: Any) -> str:
    return "" if user is None or not user.is_authenticated else str(user.pk)


def group_channel(spec: Spec, user: str) -> str:
    """The group's channel: an HMAC under the token secret, so that knowing the
    spec and the user (public inputs) is not enough to name it."""
    identity = json.dumps(
        [spec.name, spec.label, spec.params, spec.data, spec.serializer, user], sort_keys=True
    )
    key = settings.secret.encode()
    digest = hmac.new(key, identity.encode(), hashlib.sha256).hexdigest()[:DIGEST_CHARS]
    return f"{GROUP_PREFIX}{spec.name}.{digest}"


def _group_automaton() -> list[list[tuple[str, int]]]:
    """Page-group channels as a list of states, each a list of (characters, next
    state); the last state accepts."""
    name = string.ascii_letters + string.digits + "_.:-"
    states = [[(char, i + 1)] for i, char in enumerate(GROUP_PREFIX)]
    first = len(states)
    states += [[(name, first + 1)], [(name, first + 1), (".", first + 2)]]
    states += [[("0123456789abcdef", first + 3 + i)] for i in range(DIGEST_CHARS)]
    return [*states, []]


_GROUPS = _group_automaton()


def _glob_tokens(glob: str) -> list[str]:
    """``glob`` as fnmatch reads it: ``*``, or a pattern matching one character."""
    tokens = []
    i = 0
    while i < len(glob):
        end = i + 1
        if glob[i] == "[":
            j = end + (glob[end : end + 1] == "!")
            j += glob[j : j + 1] == "]"
            close = glob.find("]", j)
            end = close + 1 if close != -1 else end
        tokens.append(glob[i:end])
        i = end
    return tokens


def glob_opens_groups(glob: str) -> bool:
    """Whether ``glob`` matches any page-group channel (a public glob must not:
    it would open every user's groups without a token)."""
    tokens = _glob_tokens(glob)
    seen: set[tuple[int, int]] = set()
    todo = [(0, 0)]
    while todo:
        step = todo.pop()
        if step in seen:
            continue
        seen.add(step)
        index, state = step
        if index == len(tokens):
            if state == len(_GROUPS) - 1:
                return True
            continue
        token = tokens[index]
        if token == "*":
            todo.append((index + 1, state))
        for chars, following in _GROUPS[state]:
            if token == "*":
                todo.append((index, following))
            elif any(fnmatchcase(char, token) for char in chars):
                todo.append((index + 1, following))
    return False


def register(specs: Iterable[Spec], user: Any, ttl: float) -> list[tuple[str, str]]:
    """Make sure this page's groups are published to for ``ttl`` seconds more
    (rows expiring within ``ttl / 2`` are extended, none is shortened; one query
    when nothing needs writing); return (channel, name) per group."""
    key = user_key(user)
    wanted = {group_channel(spec, key): spec for spec in specs}
    if not wanted:
        return []
    now = timezone.now()
    until = now + timedelta(seconds=ttl)
    fresh_until = now + timedelta(seconds=ttl / 2)
    known = dict(
        PageGroup.objects.filter(channel__in=list(wanted)).values_list("channel", "expires")
    )
    stale = [channel for channel, expires in known.items() if expires < fresh_until]
    if stale:
        PageGroup.objects.filter(channel__in=stale, expires__lt=until).update(expires=until)
    missing = [
        PageGroup(
            channel=channel,
            name=spec.name,
            model=spec.label,
            params=spec.params,
            data=spec.data,
            serializer=spec.serializer,
            user_id=key,
            expires=until,
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
    """Groups whose params select ``instance`` (its row as it is now in the database).

    A group whose params cannot be matched is logged and left out: one bad spec
    must not stop the others, nor the save or delete."""
    groups = PageGroup.objects.filter(model=instance._meta.label_lower, expires__gt=timezone.now())
    matched = []
    manager = type(instance)._default_manager
    for group in groups:
        try:
            verdict = _python_match(instance, group.params)
            if verdict is None:
                verdict = manager.filter(pk=instance.pk, **group.params).exists()
        except Exception:
            log.exception("page group %s: cannot match params %r", group.channel, group.params)
            continue
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
    return _jsonable(data)


def _users(groups: list[PageGroup]) -> dict[str, Any]:
    ids = {g.user_id for g in groups if g.user_id}
    users: dict[str, Any] = {"": AnonymousUser()}
    if ids:
        for user in get_user_model()._default_manager.filter(pk__in=ids):
            users[str(user.pk)] = user
    return users


def serialized(
    instance: models.Model, groups: list[PageGroup], deleted: bool = False
) -> list[tuple[tuple[str, Any, str], Any]]:
    """((channel, data, name), user) per matched group, the data serialized for that user.

    A serializer that raises is logged and its group skipped: the other groups
    are still published, and a delete still happens. While deleting (inside the
    delete's transaction) each runs in a savepoint, so that its failed query
    cannot spoil the transaction."""
    users = _users(groups)
    out = []
    for group in groups:
        user = users.get(group.user_id)
        if user is None:
            continue  # the user is gone: nobody may see this
        try:
            with transaction.atomic(using=instance._state.db) if deleted else nullcontext():
                data = serialize(group, instance, user)
        except Exception:
            log.exception("page group %s: serializing %r failed", group.channel, instance)
            continue
        if deleted and isinstance(data, dict):
            data = {**data, "deleted": True}
        out.append(((group.channel, data, group.name), user))
    return out


# Model signals: publish after commit


def _publish(items: list[tuple[tuple[str, Any, str], Any]]) -> None:
    if items:
        client.deliver([client.encode(*item) for item, _ in items], [user for _, user in items])


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
    outage must not fail the save: it is logged and counted, not raised."""
    if raw or _ignored(sender):
        return
    client.on_commit(
        lambda: _publish(serialized(instance, matching_groups(instance))), kwargs.get("using")
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
        items = serialized(instance, groups, deleted=True)  # while the pk is still set
        client.on_commit(lambda: _publish(items), kwargs.get("using"))
