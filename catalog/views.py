"""The demo webhook receiver: the demo workflow's HTTP node posts here."""

from __future__ import annotations

import hmac
import json

from django.http import HttpRequest, JsonResponse
from django.utils.crypto import salted_hmac
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from .models import WebhookDelivery

MAX_PAYLOAD = 64 * 1024


def webhook_token() -> str:
    """The shared secret of the demo webhook, derived from SECRET_KEY."""
    # sha1 said, not left to the default: the token stays what it was, and Django 6.1 warns about a
    # default that will change.
    return salted_hmac("catalog.webhook", "demo", algorithm="sha1").hexdigest()


@csrf_exempt  # called by machines with a bearer secret, not by browsers with a session
@require_POST
def webhook(request: HttpRequest) -> JsonResponse:
    supplied = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
    if not hmac.compare_digest(supplied, webhook_token()):
        return JsonResponse({"error": "Invalid webhook token."}, status=401)
    if len(request.body) > MAX_PAYLOAD:
        return JsonResponse({"error": f"Payload larger than {MAX_PAYLOAD} bytes."}, status=413)
    try:
        payload = json.loads(request.body or b"{}")
    except (json.JSONDecodeError, UnicodeDecodeError):
        return JsonResponse({"error": "The body is not valid JSON."}, status=400)
    delivery = WebhookDelivery.objects.create(payload=payload)
    return JsonResponse({"received": delivery.pk}, status=201)
