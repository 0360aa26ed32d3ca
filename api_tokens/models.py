"""Bearer tokens for the JSON API. Only a SHA-256 of each token is stored."""

from __future__ import annotations

import hashlib
import secrets

from django.conf import settings
from django.db import models


def hash_token(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


class ApiToken(models.Model):
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100, help_text="What the token is for, e.g. 'CI pipeline'.")
    prefix = models.CharField(max_length=8, editable=False, help_text="First characters, to recognise it.")
    digest = models.CharField(max_length=64, unique=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    expires_at = models.DateTimeField(null=True, blank=True, help_text="Empty: never expires.")

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "API token"

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @classmethod
    def issue(cls, user, name: str, **fields) -> tuple[ApiToken, str]:
        """Create a token; returns it with the raw value, which is shown once and never stored."""
        raw = secrets.token_urlsafe(32)
        token = cls.objects.create(user=user, name=name, prefix=raw[:8], digest=hash_token(raw), **fields)
        return token, raw
