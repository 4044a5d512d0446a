"""Pages that go live: a headline channel of our own, and an article page whose
readers hear of changes to it (``article_update``)."""

from django.db import transaction
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from django_adapter import send_update
from news.models import Article


def headlines(request: HttpRequest) -> HttpResponse:
    return render(request, "news/headlines.html")


def write(request: HttpRequest) -> HttpResponse:
    return render(request, "news/write.html")


def article(request: HttpRequest, pk: int) -> HttpResponse:
    return render(request, "news/article.html", {"article": get_object_or_404(Article, pk=pk)})


@require_POST
def publish(request: HttpRequest) -> HttpResponse:
    """A new article; its headline is pushed once the article is committed."""
    title = request.POST.get("title", "").strip()
    if not title:
        return HttpResponseBadRequest("a title is needed")
    with transaction.atomic():
        article = Article.objects.create(title=title[:200])
        send_update("news.headlines", {"title": article.title}, name="headline")
    return redirect("article", pk=article.pk)


def article_update(request: HttpRequest, pk: int) -> list[dict]:
    return [
        {
            "name": "article",
            "model": Article,
            "params": {"pk": pk},
            "data": {"title": "object.title"},
        }
    ]
