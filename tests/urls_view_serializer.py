"""A URLconf for the test of the ``'serializer': '<view name>'`` form."""

from django.http import JsonResponse
from django.urls import path


def counter_for(request, user=None, data=None):
    return JsonResponse({"value": data.value, "viewer": user.username or "anonymous"})


urlpatterns = [path("counter-json/", counter_for, name="counter_json")]
