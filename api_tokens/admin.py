from django.contrib import admin, messages

from .models import ApiToken


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    list_display = ["name", "user", "prefix", "created_at", "last_used_at", "expires_at"]
    list_filter = ["created_at", "expires_at"]
    search_fields = ["name", "user__username", "prefix"]
    readonly_fields = ["prefix", "created_at", "last_used_at"]
    autocomplete_fields = ["user"]

    def get_queryset(self, request):
        queryset = super().get_queryset(request).select_related("user")
        return queryset if request.user.is_superuser else queryset.filter(user=request.user)

    def save_model(self, request, obj, form, change):
        if change:
            super().save_model(request, obj, form, change)
            return
        if not request.user.is_superuser:
            obj.user = request.user
        token, raw = ApiToken.issue(obj.user, obj.name, expires_at=obj.expires_at)
        obj.pk = token.pk
        obj.prefix, obj.digest, obj.created_at = token.prefix, token.digest, token.created_at
        messages.warning(request, f"Copy the token now, it is not shown again: {raw}")
