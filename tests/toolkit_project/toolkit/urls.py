from django.urls import path
from news import views

urlpatterns = [
    path("news/", views.headlines, name="headlines"),
    path("news/write/", views.write, name="write"),
    path("news/publish/", views.publish, name="publish"),
    path("news/<int:pk>/", views.article, name="article"),
]
