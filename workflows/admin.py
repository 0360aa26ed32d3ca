from __future__ import annotations

import datetime
import json

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import models
from django.db.models import Count
from django.forms.models import BaseInlineFormSet
from django.http import HttpRequest, JsonResponse
from django.urls import path
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString, mark_safe

from worker_mode import storable
from worker_mode.storable import StorableJSONFormField

from . import diagram, engine, graph, records, triggers, variables
from .exceptions import WorkflowFailed
from .forms import NODE_FIELDS, TRIGGER_FIELDS, NodeForm, WorkflowForm
from .models import Execution, Job, Node, Workflow


class WorkflowAssets:
    css = {"all": ["workflows/admin.css"]}
    js = ["admin/js/jquery.init.js", "workflows/admin.js"]


#: Nodes of a workflow the picker endpoint looks at (a form of more is not a workflow anyone edits).
MAX_PICKER_NODES = 100


def when(value: datetime.datetime | None) -> str:
    """A time as the execution pages show it: local, with seconds."""
    if value is None:
        return "-"
    return timezone.localtime(value).strftime("%Y-%m-%d %H:%M:%S")


def seconds(start: datetime.datetime | None, end: datetime.datetime | None) -> str:
    if start is None or end is None:
        return "-"
    return f"{(end - start).total_seconds():.3f} s"


def picker(groups: dict[str, list[dict[str, str]]]) -> SafeString:
    """The variable picker: groups of buttons that insert a placeholder where the cursor is."""
    blocks = format_html_join(
        "",
        '<div class="wf-var-group"><div class="wf-var-title">{}</div>{}</div>',
        (
            (
                title,
                format_html_join(
                    "",
                    '<button type="button" class="wf-var" data-insert="{}" title="{}">{}</button>',
                    ((v["placeholder"], v["label"], v["path"]) for v in items),
                ),
            )
            for title, items in groups.items()
        ),
    )
    return format_html(
        '<div class="wf-picker"><div class="wf-picker-help">Click a variable to insert it where the cursor '
        "is (or into the first field).</div>{}</div>",
        blocks,
    )


class NodeFormSet(BaseInlineFormSet):
    def clean(self) -> None:
        super().clean()
        if any(form.errors for form in self.forms):
            return  # each form says what is wrong with it first; the chain is checked once they are valid
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
    form = NodeForm
    formset = NodeFormSet
    formfield_overrides = JSON_FIELDS
    extra = 0
    readonly_fields = ["variables"]
    fieldsets = [
        (None, {"fields": [("key", "title", "type"), ("upstream", "branch")]}),
        (
            "Settings of the type",
            {
                "fields": list(
                    dict.fromkeys(
                        "fields_" if name == "fields" else name
                        for names in NODE_FIELDS.values()
                        for name in names
                    )
                ),
                "classes": ["wf-settings"],
            },
        ),
        ("Variables", {"fields": ["variables"], "classes": ["wf-variables"]}),
        ("Advanced", {"fields": ["advanced", "config"], "classes": ["wf-advanced"]}),
    ]

    @admin.display(description="available here")
    def variables(self, node: Node | None) -> SafeString:
        if node is None or node.pk is None:
            return mark_safe(
                '<div class="wf-picker" data-empty="1">'
                "Save, or pick a type and key: the variables appear here.</div>"
            )
        workflow = node.workflow
        shapes = [
            variables.NodeShape(n.key, n.type, n.upstream, n.branch, n.config) for n in workflow.nodes.all()
        ]
        return picker(variables.for_node(workflow.trigger_type, workflow.trigger_config, shapes, node.key))

    def get_fieldsets(self, request, obj=None):
        if obj is not None and obj.locked:  # read-only: the saved config, no type fields
            return [
                (None, {"fields": [("key", "title", "type"), ("upstream", "branch")]}),
                ("Config", {"fields": ["config"]}),
            ]
        return self.fieldsets

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
    form = WorkflowForm
    change_form_template = "admin/workflows/workflow/change_form.html"
    Media = WorkflowAssets
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
    actions = ["trigger_now", "copy_to_new_version", "enable_version"]
    readonly_fields = ["version", "next_run_at", "created_at", "updated_at", "chain"]
    fieldsets = [
        (None, {"fields": ["title", "key", "version", "description", "enabled"]}),
        (
            "Trigger",
            {
                "fields": [
                    "sync",
                    "trigger_type",
                    *dict.fromkeys(f"trigger_{name}" for names in TRIGGER_FIELDS.values() for name in names),
                    "advanced",
                    "trigger_config",
                    "next_run_at",
                ],
                "classes": ["wf-trigger-settings"],
            },
        ),
        ("Chain", {"fields": ["chain"]}),
        ("Limits", {"fields": ["stack_limit", "timeout"]}),
        ("History", {"fields": ["created_at", "updated_at"], "classes": ["collapse"]}),
    ]

    @admin.display(description="diagram")
    def chain(self, workflow: Workflow | None) -> SafeString:
        if workflow is None or workflow.pk is None:
            return mark_safe('<div class="wf-empty">Save the workflow to see its chain.</div>')
        return diagram.render(workflow, workflow.nodes.all())

    def get_fieldsets(self, request, obj=None):
        fieldsets = super().get_fieldsets(request, obj)
        if obj is not None and obj.locked:  # the trigger is read-only: no type fields
            fieldsets = [
                (name, {**options, "fields": [f for f in options["fields"] if not f.startswith("trigger_")
                                               or f in ("trigger_type", "trigger_config")
                                               if f != "advanced"]})
                for name, options in fieldsets
            ]  # fmt: skip
        if obj is None:
            fieldsets = [(name, options) for name, options in fieldsets if name != "Chain"]
        return fieldsets

    def get_urls(self):
        return [
            path(
                "variables/",
                self.admin_site.admin_view(self.variables_view),
                name="workflows_workflow_variables",
            ),
            *super().get_urls(),
        ]

    def variables_view(self, request: HttpRequest) -> JsonResponse:
        """POST the form's state (trigger and nodes): the variables each node may use."""
        if not (self.has_view_permission(request) or self.has_add_permission(request)):
            raise PermissionDenied
        if request.method != "POST":
            return JsonResponse({"error": "POST the form's state as JSON."}, status=405)
        try:
            state = storable.loads(request.body or b"{}", what="The form's state")
            nodes = [
                variables.NodeShape(
                    str(n.get("key") or "")[:100],
                    str(n.get("type") or ""),
                    str(n.get("upstream") or "")[:100],
                    str(n.get("branch") or ""),
                    n.get("config") if isinstance(n.get("config"), dict) else {},
                )
                for n in (state.get("nodes") or [])[:MAX_PICKER_NODES]
                if isinstance(n, dict)
            ]
            trigger_config = state.get("trigger_config")
            result = variables.for_workflow(str(state.get("trigger_type") or ""), trigger_config, nodes)
        except (ValueError, TypeError, AttributeError) as exc:
            message = (
                str(exc)
                if isinstance(exc, storable.NotStorable)
                else "The form's state must be a JSON object."
            )
            return JsonResponse({"error": message}, status=400)
        return JsonResponse(result)

    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        extra_context = extra_context or {}
        extra_context["wf_collections"] = {
            label: [f.name for f in records.get_model(label)._meta.concrete_fields]
            for label in records.allowed_labels()
        }
        extra_context["wf_lookups"] = sorted(records.LOOKUPS)
        return super().changeform_view(request, object_id, form_url, extra_context)

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

    @admin.action(description="Enable (disables the enabled version of the same key)", permissions=["change"])
    def enable_version(self, request, queryset) -> None:
        for workflow in queryset:
            if not workflow.enabled:
                workflow.enabled = True
                workflow.save()
                self.message_user(
                    request, f"Enabled {workflow}; other versions of {workflow.key} are disabled."
                )


class JobInline(admin.TabularInline):
    model = Job
    extra = 0
    fields = ["node_key", "status", "result_json", "error", "runs", "started", "finished", "took"]
    readonly_fields = fields
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    @admin.display(description="result")
    def result_json(self, job: Job) -> str:
        return "-" if job.result is None else json.dumps(job.result, ensure_ascii=False)[:2000]

    @admin.display(description="started")
    def started(self, job: Job) -> str:
        return when(job.started_at)

    @admin.display(description="finished")
    def finished(self, job: Job) -> str:
        return when(job.finished_at)

    @admin.display(description="took")
    def took(self, job: Job) -> str:
        return seconds(job.started_at, job.finished_at)


@admin.register(Execution)
class ExecutionAdmin(admin.ModelAdmin):
    """Executions are records of what happened: read-only pages (cancel and retry are actions)."""

    Media = WorkflowAssets
    list_display = [
        "id",
        "workflow",
        "status",
        "event",
        "created",
        "started",
        "finished",
        "took",
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
    fieldsets = [
        (None, {"fields": ["workflow", "status", "trigger_event", "error_text", "triggered_by"]}),
        ("Diagram", {"fields": ["chain"]}),
        ("Times", {"fields": ["created", "started", "finished", "took", "scheduled"]}),
        ("Context", {"fields": ["context_json"]}),
        (
            "Claim",
            {
                "fields": [
                    "claimed_by_node",
                    "claimed_by",
                    "pid",
                    "runs",
                    "heartbeat",
                    "lease_expires",
                    "job_id",
                ],
                "classes": ["collapse"],
            },
        ),
    ]
    readonly_fields = [
        "workflow", "status", "trigger_event", "error_text", "triggered_by", "chain", "created", "started",
        "finished", "took", "scheduled", "context_json", "claimed_by_node", "claimed_by", "pid", "runs",
        "heartbeat", "lease_expires", "job_id",
    ]  # fmt: skip

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False  # a record of a run: nothing on it is edited (cancel and retry are actions)

    def has_cancel_permission(self, request) -> bool:
        return request.user.has_perm("workflows.cancel_execution")

    def has_retry_permission(self, request) -> bool:
        return request.user.has_perm("workflows.retry_execution")

    @admin.display(description="diagram")
    def chain(self, execution: Execution) -> SafeString:
        workflow = execution.workflow
        return diagram.render(workflow, workflow.nodes.all(), execution.jobs.all())

    @admin.display(description="event")
    def trigger_event(self, execution: Execution) -> str:
        return execution.event

    @admin.display(description="node")
    def claimed_by_node(self, execution: Execution) -> str:
        return execution.node_name or "-"

    @admin.display(description="worker")
    def claimed_by(self, execution: Execution) -> str:
        return execution.worker or "-"

    @admin.display(description="claims")
    def runs(self, execution: Execution) -> int:
        return execution.attempts

    @admin.display(description="error")
    def error_text(self, execution: Execution) -> str:
        return execution.error or "-"

    @admin.display(description="context")
    def context_json(self, execution: Execution) -> SafeString:
        text = json.dumps(execution.context, ensure_ascii=False, indent=2)
        return format_html('<pre class="wf-json">{}</pre>', text[:20000])

    @admin.display(description="created", ordering="created_at")
    def created(self, execution: Execution) -> str:
        return when(execution.created_at)

    @admin.display(description="started", ordering="started_at")
    def started(self, execution: Execution) -> str:
        return when(execution.started_at)

    @admin.display(description="finished", ordering="finished_at")
    def finished(self, execution: Execution) -> str:
        return when(execution.finished_at)

    @admin.display(description="took")
    def took(self, execution: Execution) -> str:
        return seconds(execution.started_at, execution.finished_at)

    @admin.display(description="scheduled for")
    def scheduled(self, execution: Execution) -> str:
        return when(execution.scheduled_for)

    @admin.display(description="last heartbeat")
    def heartbeat(self, execution: Execution) -> str:
        return when(execution.heartbeat_at)

    @admin.display(description="lease until")
    def lease_expires(self, execution: Execution) -> str:
        return when(execution.lease_expires_at)

    @admin.action(description="Cancel selected executions", permissions=["cancel"])
    def cancel(self, request, queryset) -> None:
        done = sum(engine.cancel(execution) for execution in queryset)
        self.message_user(request, f"Canceled {done} execution(s); finished ones were left alone.")

    @admin.action(description="Retry from the failed node", permissions=["retry"])
    def retry(self, request, queryset) -> None:
        done = sum(engine.retry(execution) for execution in queryset)
        self.message_user(request, f"Queued {done} execution(s) again; only unsuccessful ones are retried.")
