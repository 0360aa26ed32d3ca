"""Admin: the task list (progress, summary, downloads, cancel) and Import/Export on allowed changelists."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join

from . import api, tasks
from .exceptions import AsyncTaskError, NotAllowed
from .importer import Mode
from .models import AsyncTask
from .spec import ModelSpec, get_spec


@admin.register(AsyncTask)
class AsyncTaskAdmin(admin.ModelAdmin):
    list_display = [
        "id",
        "what",
        "owner",
        "status_text",
        "progress",
        "summary_short",
        "created",
    ]
    list_display_links = ["id", "what"]
    list_filter = [
        "status",
        "kind",
        "model",
        "format",
        ("owner", admin.RelatedOnlyFieldListFilter),
        "created_at",
    ]
    search_fields = ["=id", "model", "source_name", "owner__username", "error", "node_name"]
    date_hierarchy = "created_at"
    list_select_related = ["owner"]
    list_per_page = 50
    actions = ["cancel_tasks"]
    readonly_fields = [
        "kind", "model", "format", "owner", "status", "progress", "summary_text", "files", "parameters",
        "source_name", "error", "cancel_requested", "node_name", "worker", "pid", "attempts",
        "heartbeat_at", "lease_expires_at", "job_id", "created_at", "started_at", "finished_at", "expires_at",
    ]  # fmt: skip
    fields = readonly_fields

    def get_queryset(self, request: HttpRequest):
        return api.visible_tasks(request.user)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # tasks start from a model's changelist, the API or a command

    def has_change_permission(self, request: HttpRequest, obj: AsyncTask | None = None) -> bool:
        return False

    @admin.display(description="status", ordering="status")
    def status_text(self, task: AsyncTask) -> str:
        """ "Succeeded, 40 rows failed" with the report, and a failed task's reason, at a glance."""
        label = task.get_status_display().capitalize()
        failed_rows = (task.summary or {}).get("failed") or 0
        download = reverse("admin:async_tasks_asynctask_download", args=[task.pk])
        if task.status == AsyncTask.Status.SUCCEEDED and failed_rows:
            rows = "row" if failed_rows == 1 else "rows"
            text = format_html(
                '<span class="task-status task-warning">{}, {} {} failed</span>',
                label,
                f"{failed_rows:,}",
                rows,
            )
            if task.error_file:
                text += format_html(' <a href="{}?file=errors">report</a>', download)
            return text
        if task.status == AsyncTask.Status.FAILED:
            reason = task.error.splitlines()[0] if task.error else "no reason recorded"
            if len(reason) > 160:
                reason = reason[:159] + "…"
            return format_html(
                '<span class="task-status task-failed">{}</span><div class="task-reason">{}</div>',
                label,
                reason,
            )
        text = format_html('<span class="task-status task-{}">{}</span>', task.status, label)
        if task.result_file:  # an export's file, beside its status (no column of its own)
            text += format_html(' <a href="{}">download</a>', download)
        return text

    @admin.display(description="progress")
    def progress(self, task: AsyncTask) -> str:
        percent = task.percent
        label = f"{task.done:,}" + (f" / {task.total:,}" if task.total is not None else "")
        if task.pace is not None and task.status == AsyncTask.Status.RUNNING:
            label += f" — yielding to requests (at {task.pace:.0%} of full speed)"
        if percent is None:
            return format_html('<progress max="100"></progress> {}', label)
        return format_html('<progress value="{}" max="100">{}%</progress> {}', percent, percent, label)

    @admin.display(description="summary")
    def summary_text(self, task: AsyncTask) -> str:
        return task.summary_text() or "-"

    # The list's columns, short enough for a 1,400-px screen with the admin's sidebar.

    @admin.display(description="task", ordering="kind")
    def what(self, task: AsyncTask) -> str:
        return format_html(
            '{} <span title="{}">{}</span>',
            task.get_kind_display(),
            task.model,
            task.model.rsplit(".", 1)[-1],
        )

    @admin.display(description="summary")
    def summary_short(self, task: AsyncTask) -> str:
        counts = [(name, value) for name, value in (task.summary or {}).items() if value]
        order = ["created", "updated", "skipped", "failed", "exported"]
        counts.sort(key=lambda kv: order.index(kv[0]) if kv[0] in order else 9)
        return " · ".join(f"{value:,} {name}" for name, value in counts) or "-"

    @admin.display(description="created", ordering="created_at")
    def created(self, task: AsyncTask) -> str:
        from django.utils import timezone

        local = timezone.localtime(task.created_at)
        return format_html("{}<br>{}", local.strftime("%Y-%m-%d"), local.strftime("%H:%M:%S"))

    @admin.display(description="files")
    def files(self, task: AsyncTask) -> str:
        links = []
        if task.result_file:
            links.append((reverse("admin:async_tasks_asynctask_download", args=[task.pk]), "result"))
        if task.error_file:
            links.append(
                (reverse("admin:async_tasks_asynctask_download", args=[task.pk]) + "?file=errors", "errors")
            )
        return format_html_join(" | ", '<a href="{}">{}</a>', links) or "-"

    @admin.action(description="Cancel selected tasks")
    def cancel_tasks(self, request: HttpRequest, queryset) -> None:
        canceled = sum(tasks.cancel(task) for task in queryset if not task.finished)
        self.message_user(request, f"Canceled {canceled} task(s); running ones stop at their next batch.")

    def get_urls(self):
        urls = super().get_urls()
        view = self.admin_site.admin_view
        return [
            path("<int:pk>/download/", view(self.download_view), name="async_tasks_asynctask_download"),
            path("<int:pk>/cancel/", view(self.cancel_view), name="async_tasks_asynctask_cancel"),
            *urls,
        ]

    def download_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        if not self.has_view_permission(request):
            raise PermissionDenied
        task = get_object_or_404(self.get_queryset(request), pk=pk)
        return api.download_response(task, errors=request.GET.get("file") == "errors")

    def cancel_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        if request.method != "POST" or not self.has_view_permission(request):
            raise PermissionDenied
        task = get_object_or_404(self.get_queryset(request), pk=pk)
        if tasks.cancel(task):
            self.message_user(request, f"Task {pk} canceled.")
        else:
            self.message_user(request, f"Task {pk} has already finished.", messages.WARNING)
        return HttpResponseRedirect(reverse("admin:async_tasks_asynctask_change", args=[pk]))

    def changelist_view(self, request: HttpRequest, extra_context: dict | None = None):
        extra_context = extra_context or {}
        # Refresh the page while tasks run, so the progress bars move.
        extra_context["refresh"] = (
            self.get_queryset(request)
            .filter(status__in=[AsyncTask.Status.QUEUED, AsyncTask.Status.RUNNING])
            .exists()
        )
        return super().changelist_view(request, extra_context)

    def change_view(self, request: HttpRequest, object_id: str, form_url: str = "", extra_context=None):
        extra_context = extra_context or {}
        task = self.get_queryset(request).filter(pk=object_id).first()
        extra_context["refresh"] = task is not None and not task.finished
        extra_context["task"] = task
        return super().change_view(request, object_id, form_url, extra_context)


class ImportForm(forms.Form):
    file = forms.FileField(help_text="CSV (any delimiter, UTF-8 or a detected encoding) or XLSX.")
    format = forms.ChoiceField(
        choices=[("", "from the file name"), *AsyncTask.Format.choices], required=False
    )
    mode = forms.ChoiceField(
        choices=[
            (Mode.INSERT, "Insert only: an existing identifier is an error"),
            (Mode.SKIP, "Insert, skip existing records"),
            (Mode.UPDATE, "Insert new records, update existing ones"),
            (Mode.UPDATE_ONLY, "Update existing records only, skip new ones"),
        ]
    )
    encoding = forms.CharField(required=False, help_text="Empty: detected (UTF-8 with or without BOM, ...).")
    delimiter = forms.CharField(required=False, max_length=1, strip=False, help_text="Empty: detected.")
    sheet = forms.CharField(required=False, help_text="XLSX: the sheet's name; empty: the first sheet.")
    fire_workflows = forms.BooleanField(
        required=False, help_text="Run collection-event workflows for the imported rows."
    )


class ExportForm(forms.Form):
    format = forms.ChoiceField(choices=AsyncTask.Format.choices)
    fields = forms.MultipleChoiceField(widget=forms.CheckboxSelectMultiple, required=False)

    def __init__(self, *args: Any, spec: ModelSpec, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        choices = [(f.name, f.verbose_name) for f in spec.fields]
        self.fields["fields"].choices = choices
        self.fields["fields"].initial = [name for name, _ in choices]


class ImportExportMixin:
    """Add "Import" and "Export" to a ModelAdmin's changelist; the model must be in ASYNC_TASKS_MODELS.

    Export takes the changelist's current filters and search; both create a task and go to it.
    """

    change_list_template = "admin/async_tasks/change_list_import_export.html"

    def get_urls(self):
        opts = self.model._meta
        name = f"{opts.app_label}_{opts.model_name}"
        view = self.admin_site.admin_view
        return [
            path("import/", view(self.import_view), name=f"{name}_import"),
            path("export/", view(self.export_view), name=f"{name}_export"),
            *super().get_urls(),
        ]

    def _spec(self) -> ModelSpec:
        try:
            return get_spec(self.model._meta.label)
        except NotAllowed:
            raise Http404(f"{self.model._meta.label} is not in ASYNC_TASKS_MODELS.") from None

    def changelist_view(self, request: HttpRequest, extra_context: dict | None = None):
        extra_context = extra_context or {}
        try:
            spec = get_spec(self.model._meta.label)
        except NotAllowed:  # not (or no longer) allowed: no buttons
            extra_context["can_import"] = extra_context["can_export"] = False
            return super().changelist_view(request, extra_context)
        extra_context["can_import"] = api.can_import(request.user, spec, Mode.INSERT)
        extra_context["can_export"] = api.can_export(request.user, spec)
        extra_context["export_query"] = request.GET.urlencode()
        return super().changelist_view(request, extra_context)

    def _task_redirect(self, request: HttpRequest, task: AsyncTask) -> HttpResponse:
        messages.success(request, f"{task} queued; this page shows its progress.")
        if request.user.has_perm("async_tasks.view_asynctask"):
            return HttpResponseRedirect(reverse("admin:async_tasks_asynctask_change", args=[task.pk]))
        return HttpResponseRedirect(
            reverse(f"admin:{self.model._meta.app_label}_{self.model._meta.model_name}_changelist")
        )

    def import_view(self, request: HttpRequest) -> HttpResponse:
        spec = self._spec()
        if not api.can_import(request.user, spec, Mode.INSERT):
            raise PermissionDenied
        form = ImportForm(request.POST or None, request.FILES or None)
        if request.method == "POST" and form.is_valid():
            data = form.cleaned_data
            if not api.can_import(request.user, spec, data["mode"]):
                raise PermissionDenied
            upload = data["file"]
            try:
                task = tasks.create_import(
                    request.user, spec.label, upload, name=upload.name, fmt=data["format"] or None,
                    size=upload.size, mode=data["mode"], encoding=data["encoding"] or None,
                    delimiter=data["delimiter"] or None, sheet=data["sheet"] or None,
                    fire_workflows=data["fire_workflows"],
                )  # fmt: skip
            except AsyncTaskError as exc:
                form.add_error(None, str(exc))
            else:
                return self._task_redirect(request, task)
        return self._form_page(request, spec, form, "Import", multipart=True)

    def export_view(self, request: HttpRequest) -> HttpResponse:
        spec = self._spec()
        if not api.can_export(request.user, spec):
            raise PermissionDenied
        query = request.GET.get("_changelist_filters", "")
        filters = [[k, v] for k, v in parse_qsl(query, keep_blank_values=True)]
        form = ExportForm(request.POST or None, spec=spec)
        if request.method == "POST" and form.is_valid():
            try:
                task = tasks.create_export(
                    request.user, spec.label, fmt=form.cleaned_data["format"],
                    fields=form.cleaned_data["fields"] or None, filters=filters,
                )  # fmt: skip
            except AsyncTaskError as exc:
                form.add_error(None, str(exc))
            else:
                return self._task_redirect(request, task)
        return self._form_page(request, spec, form, "Export", filters=filters)

    def _form_page(self, request: HttpRequest, spec: ModelSpec, form: forms.Form, action: str, **extra: Any):
        opts = self.model._meta
        context = {
            **self.admin_site.each_context(request),
            "title": f"{action} {opts.verbose_name_plural}",
            "opts": opts,
            "form": form,
            "action": action,
            "spec": spec,
            "template_url": reverse("async_tasks:template", args=[spec.label]),
            **extra,
        }
        return TemplateResponse(request, "admin/async_tasks/import_export_form.html", context)
