from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_safe


@require_safe
def home(request: HttpRequest) -> HttpResponse:
    """A landing page that says nothing about the node; the data lives behind the admin login."""
    return render(request, "home.html")
