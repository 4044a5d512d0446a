from django.test import TestCase

from django_adapter.testing import PushedUpdate, capture_updates
from news.models import Article


class NewsTests(TestCase):
    def test_publishing_pushes_the_headline(self):
        with capture_updates() as updates:
            self.client.post("/news/publish/", {"title": "Hello"})
        headline = PushedUpdate("news.headlines", {"title": "Hello"}, "headline")
        self.assertEqual(updates, [headline])

    def test_readers_of_an_article_get_its_new_title(self):
        article = Article.objects.create(title="Draft")
        self.client.get(f"/news/{article.pk}/")  # a reader's page: article_update
        with capture_updates() as updates:
            article.title = "Final"
            article.save()
        [update] = updates
        self.assertEqual((update.name, update.data), ("article", {"title": "Final"}))
        self.assertTrue(update.user.is_anonymous)  # serialized for that reader
