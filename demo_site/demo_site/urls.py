from demo import views
from django.contrib.auth import views as auth_views
from django.urls import path

urlpatterns = [
    path("", views.index, name="index"),
    path("me/", views.me, name="me"),
    path("me/bump/", views.bump, name="bump"),
    path("chat/", views.chat, name="chat"),
    path("wamp/", views.wamp_chat, name="wamp"),
    path("login/", auth_views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(next_page="/login/"), name="logout"),
]
