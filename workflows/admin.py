from __future__ import annotations

from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import Count
from django.forms.models import BaseInlineFormSet

from worker_mode.storable import StorableJSONFormField

from . import engine, graph, triggers
from .exceptions import WorkflowFailed
from .models import Execution, Job, Node, Workflow


class NodeFormSet(BaseInlineFormSet):
    def clean(self) -> None:
        super().clean()
        kept = [
            form.instance
            for form in self.forms
            if form.cleaned_data and not form.cleaned_data.get("DELETE") and form.instance.type
        ]
        problems = graph.check(kept, sync=self.instance.sync)
        if problems:
            raise ValidationError(problems)


#: JSON the database cannot store is a form error, not a 500.
JSON_FIELDS = {models.JSONField: {"form_class": StorableJSONFormField}}


class NodeInline(admin.StackedInline):
    model = Node
    formset = NodeFormSet
    formfield_overrides = JSON_FIELDS
    extra = 0
    fields = [("key", "title", "type"), ("upstream", "branch"), "config"]

    def _locked(self, obj) -> bool:
        return obj is not None and obj.locked

    def has_add_permission(self, request, obj=None):
        return not self._locked(obj) and super().has_add_permission(request, obj)

    def has_change_permission(self, request, obj=None):
        return not self._locked(obj) and super().has_change_permission(request, obj)

    def has_delete_permission(self, request, obj=None):
        return not self._locked(obj) and super().has_delete_permission(request, obj)


@admin.register(Workflow)
class WorkflowAdmin(admin.ModelAdmin):
    list_display = [
        "title",
        "key",
        "version",
        "enabled",
        "sync",
        "trigger_type",
        "next_run_at",
        "execution_count",
    ]
    list_filter = ["enabled", "sync", "trigger_type"]
    search_fields = ["title", "key", "description"]
    inlines = [NodeInline]
    formfield_overrides = JSON_FIELDS
    actions = ["trigger_now", "copy_to_new_version"]
    readonly_fields = ["version", "next_run_at", "created_at", "updated_at"]
    fieldsets = [
        (None, {"fields": ["title", "key", "version", "description", "enabled"]}),
        ("Trigger", {"fields": ["sync", "trigger_type", "trigger_config", "next_run_at"]}),
        ("Limits", {"fields": ["stack_limit", "timeout"]}),
        ("History", {"fields": ["created_at", "updated_at"], "classes": ["collapse"]}),
    ]

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(_executions=Count("executions"))

    @admin.display(description="executions", ordering="_executions")
    def execution_count(self, obj: Workflow) -> int:
        return obj._executions

    def get_readonly_fields(self, request, obj=None):
        fields = list(self.readonly_fields)
        if obj is not None:
            fields += ["key", "sync"]
            if obj.locked:
                fields += ["trigger_type", "trigger_config", "stack_limit", "timeout"]
        return fields

    def has_trigger_permission(self, request) -> bool:
        return request.user.has_perm("workflows.trigger_workflow")

    @admin.action(description="Trigger now (empty $context.data)", permissions=["trigger"])
    def trigger_now(self, request, queryset) -> None:
        for workflow in queryset:
            if not workflow.enabled:
                self.message_user(request, f"{workflow} is disabled; not triggered.", messages.WARNING)
                continue
            try:
                execution = triggers.trigger_manually(workflow, {}, user=request.user)
            except WorkflowFailed as exc:
                self.message_user(request, str(exc), messages.ERROR)
                continue
            if execution is None:
                self.message_user(request, f"{workflow}: stopped by its stack limit.", messages.WARNING)
            else:
                self.message_user(request, f"{workflow}: execution #{execution.pk} {execution.status}.")

    @admin.action(description="Copy to a new version", permissions=["add"])
    def copy_to_new_version(self, request, queryset) -> None:
        for workflow in queryset:
            copy = workflow.copy_to_new_version()
            self.message_user(request, f"Created {copy} (disabled, editable).")


class JobInline(admin.TabularInline):
    model = Job
    extra = 0
    fields = ["node_key", "status", "result", "error", "runs", "started_at", "finished_at"]
    readonly_fields = fields
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Execution)
class ExecutionAdmin(admin.ModelAdmin):
    list_display = [
        "id",
        "workflow",
        "status",
        "event",
        "created_at",
        "started_at",
        "finished_at",
        "node_name",
        "attempts",
    ]
    list_filter = [
        "status",
        "event",
        ("workflow", admin.RelatedOnlyFieldListFilter),
        "created_at",
        "node_name",
    ]
    search_fields = ["=id", "workflow__key", "workflow__title", "error", "worker"]
    date_hierarchy = "created_at"
    list_select_related = ["workflow"]
    inlines = [JobInline]
    actions = ["cancel", "retry"]
    list_per_page = 50

    def get_readonly_fields(self, request, obj=None):
        return [f.name for f in Execution._meta.fields]

    def has_add_permission(self, request):
        return False

    def has_cancel_permission(self, request) -> bool:
        return request.user.has_perm("workflows.cancel_execution")

    def has_retry_permission(self, request) -> bool:
        return request.user.has_perm("workflows.retry_execution")

    @admin.action(description="Cancel selected executions", permissions=["cancel"])
    def cancel(self, request, queryset) -> None:
        done = sum(engine.cancel(execution) for execution in queryset)
        self.message_user(request, f"Canceled {done} execution(s); finished ones were left alone.")

    @admin.action(description="Retry from the failed node", permissions=["retry"])
    def retry(self, request, queryset) -> None:
        done = sum(engine.retry(execution) for execution in queryset)
        self.message_user(request, f"Queued {done} execution(s) again; only unsuccessful ones are retried.")
