from __future__ import annotations

from django.core.exceptions import ValidationError


class WorkflowError(Exception):
    """Base of the workflow engine's errors."""


class ConfigError(ValidationError):
    """A trigger's or node's configuration is invalid (shown in the admin form)."""


class NodeFailed(WorkflowError):
    """A node ended as *failed* (an expected outcome: a rejected condition, an HTTP 500, an end node)."""

    def __init__(self, message: str, result=None) -> None:
        super().__init__(message)
        self.result = result


class ExpressionError(WorkflowError):
    """An expression or a variable could not be evaluated."""


class WorkflowFailed(WorkflowError):
    """A synchronous workflow did not resolve; raised so the triggering transaction rolls back."""

    def __init__(self, execution) -> None:
        self.execution = execution
        super().__init__(
            f"Workflow {execution.workflow.key!r} {execution.status}: {execution.error or 'no details'}"
        )
