"""The demo: a few products and the "order-created" workflow (check stock, decrement or reject, webhook)."""

from __future__ import annotations

from decimal import Decimal

from django.db import transaction

from workflows.models import Node, Workflow

from .models import Product
from .views import webhook_token

DEMO_KEY = "order-created"

PRODUCTS = [
    ("DEMO-1", "Espresso beans 1 kg", Decimal("18.50"), 20),
    ("DEMO-2", "Milk frother", Decimal("39.00"), 3),
    ("DEMO-3", "Paper filters (100)", Decimal("4.20"), 0),
]


def demo_nodes(webhook_url: str) -> list[dict]:
    order = "{{ $context.data.id }}"
    return [
        {
            "key": "product",
            "type": "query",
            "title": "Load the ordered product",
            "config": {"collection": "catalog.Product", "filter": {"id": "{{ $context.data.product }}"}},
        },
        {
            "key": "in_stock",
            "type": "condition",
            "upstream": "product",
            "title": "Enough stock?",
            "config": {"expression": "({{ $jobs.product.quantity }} or 0) >= {{ $context.data.quantity }}"},
        },
        {
            "key": "new_stock",
            "type": "calculation",
            "upstream": "in_stock",
            "branch": "true",
            "title": "Stock after the order",
            "config": {"expression": "{{ $jobs.product.quantity }} - {{ $context.data.quantity }}"},
        },
        {
            "key": "decrement",
            "type": "update",
            "upstream": "new_stock",
            "title": "Decrement the stock",
            "config": {
                "collection": "catalog.Product",
                "filter": {"id": "{{ $context.data.product }}"},
                "values": {"quantity": "{{ $jobs.new_stock }}"},
            },
        },
        {
            "key": "accept",
            "type": "update",
            "upstream": "decrement",
            "title": "Accept the order",
            "config": {
                "collection": "catalog.Order",
                "filter": {"id": order},
                "values": {"status": "accepted"},
            },
        },
        {
            "key": "reject",
            "type": "update",
            "upstream": "in_stock",
            "branch": "false",
            "title": "Reject the order",
            "config": {
                "collection": "catalog.Order",
                "filter": {"id": order},
                "values": {"status": "rejected"},
            },
        },
        {
            "key": "notify",
            "type": "http",
            "upstream": "in_stock",
            "title": "Call the webhook",
            "config": {
                "method": "POST",
                "url": webhook_url,
                "headers": {"Authorization": f"Bearer {webhook_token()}"},
                "body": {"order": order, "accepted": "{{ $jobs.in_stock }}", "node": "{{ $system.node }}"},
                "timeout": 5,
            },
        },
    ]


@transaction.atomic
def load(webhook_url: str) -> tuple[Workflow, bool]:
    """Create the demo products and workflow unless they exist; returns (workflow, created)."""
    for sku, name, price, quantity in PRODUCTS:
        Product.objects.get_or_create(sku=sku, defaults={"name": name, "price": price, "quantity": quantity})
    existing = Workflow.objects.filter(key=DEMO_KEY).order_by("-version").first()
    if existing is not None:
        return existing, False
    workflow = Workflow.objects.create(
        key=DEMO_KEY,
        title="New order: check stock, accept or reject, notify",
        description="Demo: runs on workflow:process nodes whenever an order is created.",
        enabled=True,
        trigger_type=Workflow.Trigger.COLLECTION,
        trigger_config={"collection": "catalog.Order", "events": ["created"]},
    )
    for spec in demo_nodes(webhook_url):
        node = Node(
            workflow=workflow,
            upstream=spec.get("upstream", ""),
            branch=spec.get("branch", ""),
            **{k: spec[k] for k in ("key", "type", "title", "config")},
        )
        node.full_clean(exclude=["workflow"])
        node.save()
    return workflow, True
