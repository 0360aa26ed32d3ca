"""For the ModelAdmin of a collection workflows listen to: a synchronous workflow that rejects a
save or a delete becomes a message on the page, and staff can run a workflow on chosen records."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse

from . import triggers
from .exceptions import WorkflowFailed
from .models import Workflow


def rejection_message(exc: WorkflowFailed) -> str:
    """What a user reads when a synchronous workflow refuses their change."""
    workflow = exc.execution.workflow
    reason = exc.execution.error or f"it ended as {exc.execution.status}"
    return f"Not saved: the workflow “{workflow.title}” ({workflow.key}) rejected this change: {reason}"


class RunWorkflowForm(forms.Form):
    workflow = forms.ModelChoiceField(queryset=Workflow.objects.none(), empty_label=None)

    def __init__(self, *args: Any, label: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["workflow"].queryset = Workflow.objects.filter(
            enabled=True, trigger_type=Workflow.Trigger.COLLECTION, trigger_config__collection=label
        ).order_by("title")


class WorkflowCollectionAdmin:
    """Mix into the ModelAdmin of a model in WORKFLOWS_COLLECTIONS (before ``admin.ModelAdmin``)."""

    def changeform_view(self, request: HttpRequest, object_id=None, form_url="", extra_context=None):
        try:
            return super().changeform_view(request, object_id, form_url, extra_context)
        except WorkflowFailed as exc:
            if request.method != "POST":
                raise
            # The save ran in the view's transaction and was rolled back; show the same form
            # again, bound to what was posted, with the workflow's reason as its error.
            request._workflow_rejection = exc  # type: ignore[attr-defined]
            return super().changeform_view(request, object_id, form_url, extra_context)

    def get_form(self, request: HttpRequest, obj=None, change: bool = False, **kwargs: Any):
        form = super().get_form(request, obj, change, **kwargs)
        rejection = getattr(request, "_workflow_rejection", None)
        if rejection is None:
            return form

        class RejectedForm(form):
            def clean(self):
                cleaned = super().clean()
                self.add_error(None, rejection_message(rejection))
                return cleaned

        return RejectedForm

    def delete_view(self, request: HttpRequest, object_id: str, extra_context=None):
        try:
            return super().delete_view(request, object_id, extra_context)
        except WorkflowFailed as exc:
            self.message_user(
                request, rejection_message(exc).replace("Not saved", "Not deleted"), messages.ERROR
            )
            return HttpResponseRedirect(request.get_full_path())

    def changelist_view(self, request: HttpRequest, extra_context=None):
        try:
            return super().changelist_view(request, extra_context)
        except WorkflowFailed as exc:  # an action (delete selected, ...) or list_editable
            self.message_user(
                request, rejection_message(exc).replace("Not saved", "Not done"), messages.ERROR
            )
            return HttpResponseRedirect(request.get_full_path())

    def get_actions(self, request: HttpRequest, action_location=None):
        # Django 6.1 says where the actions are offered (its ActionLocation: the change list or a
        # change form) and warns about overrides without the parameter; 5.2 and 6.0 pass nothing.
        if action_location is None:
            actions = super().get_actions(request)
            action = self.get_action("run_workflow")
        else:
            actions = super().get_actions(request, action_location=action_location)
            action = self.get_action("run_workflow", action_location)  # None on a change form
        if action is not None and request.user.has_perm("workflows.trigger_workflow"):
            actions["run_workflow"] = action
        return actions

    @admin.action(description="Run a workflow on the selected records")
    def run_workflow(self, request: HttpRequest, queryset) -> HttpResponse | None:
        """Admin action: trigger a collection workflow of this model for each chosen record."""
        label = self.model._meta.label
        form = RunWorkflowForm(request.POST if "apply" in request.POST else None, label=label)
        if "apply" in request.POST and form.is_valid():
            workflow = form.cleaned_data["workflow"]
            started, rejected = [], []
            for record in queryset:
                try:
                    execution = triggers.trigger_manually(workflow, user=request.user, record=record)
                except WorkflowFailed as exc:
                    rejected.append(f"{record}: {exc.execution.error or exc.execution.status}")
                    continue
                if execution is not None:
                    started.append(execution)
            if started:
                ids = ", ".join(f"#{e.pk} ({e.status})" for e in started[:20])
                more = f" and {len(started) - 20} more" if len(started) > 20 else ""
                self.message_user(request, f"{workflow}: {len(started)} execution(s) {ids}{more}.")
            for line in rejected[:20]:
                self.message_user(request, f"{workflow} rejected {line}", messages.ERROR)
            return None
        if not form.fields["workflow"].queryset.exists():
            self.message_user(
                request, f"No enabled workflow listens to {label}; create one with a collection trigger.",
                messages.WARNING,
            )  # fmt: skip
            return None
        return TemplateResponse(
            request,
            "admin/workflows/run_on_records.html",
            {
                **self.admin_site.each_context(request),
                "title": "Run a workflow on the selected records",
                "opts": self.model._meta,
                "form": form,
                "records": queryset[:100],
                "count": queryset.count(),
                "selected": request.POST.getlist(helpers.ACTION_CHECKBOX_NAME),
                "select_across": request.POST.get("select_across", "0"),
            },
        )


class WorkflowCollectionModelAdmin(WorkflowCollectionAdmin, admin.ModelAdmin):
    pass
