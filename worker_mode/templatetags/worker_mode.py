"""``{% uncovered_services as keys %}``: service keys with queued work and no live node (cached 5 s)."""

from __future__ import annotations

import logging

from django import template
from redis import RedisError

from ..coverage import uncovered_keys

register = template.Library()
logger = logging.getLogger(__name__)


@register.simple_tag
def uncovered_services() -> list[str]:
    try:
        return uncovered_keys()
    except RedisError:
        logger.warning("Could not read the cluster's presence for the admin banner", exc_info=True)
        return []
