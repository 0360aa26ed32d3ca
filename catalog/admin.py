from django.contrib import admin

from async_tasks.admin import ImportExportMixin
from workflows.collection_admin import WorkflowCollectionAdmin

from .models import Order, Product, WebhookDelivery


@admin.register(Product)
class ProductAdmin(WorkflowCollectionAdmin, ImportExportMixin, admin.ModelAdmin):
    list_display = ["sku", "name", "price", "quantity", "active", "created"]
    list_filter = ["active", "created"]
    search_fields = ["sku", "name"]
    list_per_page = 50


@admin.register(Order)
class OrderAdmin(WorkflowCollectionAdmin, ImportExportMixin, admin.ModelAdmin):
    list_display = ["id", "product", "quantity", "customer", "status", "created_at"]
    list_filter = ["status", "created_at"]
    search_fields = ["customer", "product__sku", "product__name"]
    autocomplete_fields = ["product"]
    list_select_related = ["product"]
    date_hierarchy = "created_at"


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(admin.ModelAdmin):
    list_display = ["id", "received_at", "payload"]
    date_hierarchy = "received_at"
    readonly_fields = ["received_at", "payload"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False
