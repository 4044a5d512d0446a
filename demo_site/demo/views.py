"""The demo's pages: a live counter, a per-user score and a chat (also over WAMP)."""

from django.contrib.auth.decorators import login_required
from django.db import transaction
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render

from demo.models import ChatMessage, Counter, Score
from django_adapter import page_position, send_update


def index(request: HttpRequest) -> HttpResponse:
    """Each visit increments the counter; every open page shows the new value live."""
    with transaction.atomic():
        counter, _ = Counter.objects.select_for_update().get_or_create(pk=1)
        counter.value += 1
        counter.save()
    return render(request, "demo/index.html", {"counter": counter})


def index_update(request: HttpRequest) -> list[dict]:
    """What the page follows: saves of Counter 1, sent as the fields it names."""
    return [
        {
            "name": "counter",
            "model": Counter,
            "params": {"pk": 1},
            "data": {"value": "object.value"},
        }
    ]


def score_for_page(request: HttpRequest, score: Score, data: dict | None) -> dict:
    """Serialized for the page's own user (request.user is that user)."""
    return {"points": score.points, "for": request.user.username}


@login_required
def me(request: HttpRequest) -> HttpResponse:
    score, _ = Score.objects.get_or_create(user=request.user)
    return render(request, "demo/me.html", {"score": score})


def me_update(request: HttpRequest) -> list[dict]:
    """What the page follows: saves of this user's own Score, sent by score_for_page."""
    if not request.user.is_authenticated:
        return []
    return [
        {
            "name": "score",
            "model": Score,
            "params": {"user": request.user.pk},
            "serializer": score_for_page,
        }
    ]


@login_required
def bump(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        with transaction.atomic():
            score, _ = Score.objects.select_for_update().get_or_create(user=request.user)
            score.points += 1
            score.save()
    return redirect("me")


def chat(request: HttpRequest) -> HttpResponse:
    """A live list through a plain channel and send_update()."""
    if request.method == "POST":
        text = request.POST.get("text", "").strip()[:500]
        if text:
            author = request.user.username if request.user.is_authenticated else "guest"
            with transaction.atomic():
                message = ChatMessage.objects.create(author=author, text=text)
                # Sent when the transaction commits; never if it rolls back.
                send_update(
                    "demo.chat",
                    {"id": message.pk, "author": author, "text": text},
                    name="chat_message",
                )
        if request.headers.get("x-requested-with") == "fetch":
            return HttpResponse(status=204)
        return redirect("chat")
    page_position(request)  # before the read: a message saved after it reaches the page
    messages = list(ChatMessage.objects.all()[:50])[::-1]
    return render(request, "demo/chat.html", {"messages": messages})


def wamp_chat(request: HttpRequest) -> HttpResponse:
    """The chat, followed by AutobahnJS (WAMP) instead of serverpush.js."""
    page_position(request)  # before the read: a message saved after it reaches the page
    messages = list(ChatMessage.objects.all()[:50])[::-1]
    return render(request, "demo/wamp.html", {"messages": messages})
