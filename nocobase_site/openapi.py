"""The JSON API as an OpenAPI 3.0 document, served at ``/api/openapi.json``.

Written here beside the views it describes, with its enums taken from the models, and
checked against them: ``tests/test_openapi.py`` holds every ``/api/`` URL and its methods
to the document, and runs schemathesis against a live node with it.
"""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import cache_control
from django.views.decorators.http import require_safe

TEXT = {"type": "string"}
TIME = {"type": "string", "format": "date-time"}
NULLABLE_TIME = {"type": "string", "format": "date-time", "nullable": True}


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def _json(description: str, schema: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}},
    }


#: Every URL answers 400 to a query string with a NUL character (nocobase_site.middleware).
NUL_ERROR = {"400": _error("A parameter that is refused, e.g. a NUL character in the query string.")}
AUTH_ERRORS = {
    "401": _error("Not authenticated, or an invalid or expired token."),
    "403": _error("Not allowed: inactive user, staff only, a permission missing, or CSRF failed."),
    "405": _error("Method not allowed (the Allow header lists the allowed ones)."),
}


def _pk(name: str = "pk") -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "integer", "minimum": 0}}


def _label() -> dict[str, Any]:
    from async_tasks.conf import conf

    return {
        "name": "label",
        "in": "path",
        "required": True,
        "description": "An allowed model's label (ASYNC_TASKS_MODELS).",
        "schema": {"type": "string", "enum": sorted(conf.ASYNC_TASKS_MODELS)},
    }


#: What a created task leads to (schemathesis follows these in its stateful phase).
TASK_LINKS = {
    "GetTask": {"operationId": "get_task", "parameters": {"pk": "$response.body#/id"}},
    "CancelTask": {"operationId": "cancel_task", "parameters": {"pk": "$response.body#/id"}},
    "DownloadTaskFile": {"operationId": "download_task_file", "parameters": {"pk": "$response.body#/id"}},
}
EXECUTION_LINKS = {
    "GetExecution": {"operationId": "get_execution", "parameters": {"pk": "$response.body#/id"}}
}


def _linked(response: dict[str, Any], links: dict[str, Any]) -> dict[str, Any]:
    return {**response, "links": links}


def document() -> dict[str, Any]:
    from async_tasks.importer import Mode
    from async_tasks.models import AsyncTask
    from workflows.models import Execution, Job

    task_paths = {
        "/api/import/{label}": {
            "post": {
                "summary": "Start an import: a task queued on async-task:process.",
                "operationId": "start_import",
                "parameters": [_label()],
                "requestBody": {
                    "required": True,
                    "content": {
                        "multipart/form-data": {
                            "schema": {
                                "type": "object",
                                "required": ["file"],
                                "properties": {
                                    "file": {"type": "string", "format": "binary"},
                                    "mode": {"type": "string", "enum": list(Mode.choices)},
                                    "format": {"type": "string", "enum": AsyncTask.Format.values},
                                    "encoding": TEXT,
                                    "delimiter": {"type": "string", "maxLength": 1},
                                    "sheet": TEXT,
                                    "fire_workflows": {
                                        "type": "string",
                                        "enum": ["true", "false", "1", "0", "yes", "no", "on", "off", ""],
                                    },
                                },
                            }
                        }
                    },
                },
                "responses": {
                    "202": _linked(_json("The task, queued.", "Task"), TASK_LINKS),
                    "400": _error("The file or an option is refused (the message says which)."),
                    "404": _error("No such allowed model."),
                    "413": _error("The upload exceeds ASYNC_TASKS_MAX_UPLOAD_SIZE."),
                    **AUTH_ERRORS,
                },
            }
        },
        "/api/import/{label}/template": {
            "get": {
                "summary": "A file with the header row of the model's allowed fields.",
                "operationId": "import_template",
                "parameters": [
                    _label(),
                    {
                        "name": "format",
                        "in": "query",
                        "schema": {"type": "string", "enum": AsyncTask.Format.values},
                    },
                ],
                "responses": {
                    "200": {
                        "description": "The template.",
                        "content": {
                            "text/csv": {"schema": {"type": "string", "format": "binary"}},
                            "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet": {
                                "schema": {"type": "string", "format": "binary"}
                            },
                        },
                    },
                    "400": _error("Unknown format."),
                    "404": _error("No such allowed model."),
                    **AUTH_ERRORS,
                },
            }
        },
        "/api/export/{label}": {
            "post": {
                "summary": "Start an export: a task queued on async-task:process.",
                "operationId": "start_export",
                "parameters": [_label()],
                "requestBody": {
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": {
                                    "format": {
                                        "type": "string",
                                        "enum": [*AsyncTask.Format.values, None],  # 3.0: null is listed
                                        "nullable": True,
                                    },
                                    "fields": {
                                        "type": "array",
                                        "items": TEXT,
                                        "nullable": True,
                                        "description": "Omitted, null or empty: every allowed field.",
                                    },
                                    "filters": {
                                        "type": "object",
                                        "nullable": True,
                                        "description": "The admin changelist's filters and search.",
                                        "additionalProperties": {
                                            "oneOf": [TEXT, {"type": "array", "items": TEXT}]
                                        },
                                    },
                                },
                            }
                        }
                    }
                },
                "responses": {
                    "202": _linked(_json("The task, queued.", "Task"), TASK_LINKS),
                    "400": _error("A body, field, filter or format that is refused."),
                    "404": _error("No such allowed model."),
                    **AUTH_ERRORS,
                },
            }
        },
        "/api/tasks": {
            "get": {
                "summary": "The user's tasks, newest first, 50 a page.",
                "operationId": "list_tasks",
                "parameters": [
                    {
                        "name": "status",
                        "in": "query",
                        "description": "Empty: every status.",
                        "schema": {"type": "string", "enum": [*AsyncTask.Status.values, ""]},
                    },
                    {
                        "name": "kind",
                        "in": "query",
                        "description": "Empty: both kinds.",
                        "schema": {"type": "string", "enum": [*AsyncTask.Kind.values, ""]},
                    },
                    {"name": "page", "in": "query", "schema": {"type": "integer", "minimum": 1}},
                ],
                "responses": {
                    "200": _json("A page of tasks.", "TaskPage"),
                    "400": _error("An unknown status or kind, or a page that is not a number from 1."),
                    **AUTH_ERRORS,
                },
            }
        },
        "/api/tasks/{pk}": {
            "get": {
                "summary": "One task.",
                "operationId": "get_task",
                "parameters": [_pk()],
                "responses": {
                    "200": _json("The task.", "Task"),
                    "404": _error("No such task of yours."),
                    **NUL_ERROR,
                    **AUTH_ERRORS,
                },
            }
        },
        "/api/tasks/{pk}/cancel": {
            "post": {
                "summary": "Cancel a task: a queued one at once, a running one at its next batch.",
                "operationId": "cancel_task",
                "parameters": [_pk()],
                "responses": {
                    "202": _json("The task, canceled or with its cancel requested.", "Task"),
                    "404": _error("No such task of yours."),
                    "409": _error("The task has already finished."),
                    **NUL_ERROR,
                    **AUTH_ERRORS,
                },
            }
        },
        "/api/tasks/{pk}/download": {
            "get": {
                "summary": "The export's file, or with file=errors the import's error report.",
                "operationId": "download_task_file",
                "parameters": [
                    _pk(),
                    {"name": "file", "in": "query", "schema": {"type": "string", "enum": ["errors"]}},
                ],
                "responses": {
                    "200": {
                        "description": "The file.",
                        "content": {
                            "text/csv": {"schema": {"type": "string", "format": "binary"}},
                            "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet": {
                                "schema": {"type": "string", "format": "binary"}
                            },
                        },
                    },
                    "404": _error("No such task of yours, or it has no such file."),
                    "410": _error("The file is gone (expired or deleted)."),
                    **NUL_ERROR,
                    **AUTH_ERRORS,
                },
            }
        },
    }
    workflow_paths = {
        "/api/workflows/{key}/trigger": {
            "post": {
                "summary": (
                    "Trigger the enabled version of a workflow; the body is its $context.data "
                    "(or ?record= names a record of a collection workflow's collection)."
                ),
                "operationId": "trigger_workflow",
                "parameters": [
                    {
                        "name": "key",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "pattern": r"^[-a-zA-Z0-9_]+$"},
                    },
                    {
                        "name": "record",
                        "in": "query",
                        "required": False,
                        "description": "A record's primary key: run a collection workflow on it.",
                        "schema": {"type": "string"},
                    },
                ],
                "requestBody": {
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "description": "Any JSON object the database can store.",
                            }
                        }
                    }
                },
                "responses": {
                    "200": _linked(
                        _json("A synchronous workflow that resolved, with its jobs.", "Execution"),
                        EXECUTION_LINKS,
                    ),
                    "202": _linked(
                        _json("An asynchronous workflow's execution, queued.", "Execution"), EXECUTION_LINKS
                    ),
                    "400": _error(
                        "The body is not a JSON object the database can store, "
                        "or ?record= on a workflow without a collection."
                    ),
                    "404": _error("No enabled workflow with this key, or no such record."),
                    "409": _error("The workflow already runs in this chain (its stack limit)."),
                    "422": _error("A synchronous workflow did not resolve."),
                    **AUTH_ERRORS,
                },
            }
        },
        "/api/executions/{pk}": {
            "get": {
                "summary": "One execution with its jobs.",
                "operationId": "get_execution",
                "parameters": [_pk()],
                "responses": {
                    "200": _json("The execution.", "Execution"),
                    "404": _error("No such execution."),
                    **NUL_ERROR,
                    **AUTH_ERRORS,
                },
            }
        },
    }
    schemas = {
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": {"error": TEXT, "execution_status": TEXT},
        },
        "Job": {
            "type": "object",
            "required": ["node", "status", "result", "error", "runs", "started_at", "finished_at"],
            "properties": {
                "node": TEXT,
                "status": {"type": "string", "enum": Job.Status.values},
                "result": {"nullable": True, "description": "The node's result: any JSON value."},
                "error": TEXT,
                "runs": {"type": "integer"},
                "started_at": TIME,
                "finished_at": NULLABLE_TIME,
            },
        },
        "Execution": {
            "type": "object",
            "required": ["id", "workflow", "status", "event", "context", "created_at", "attempts", "error"],
            "properties": {
                "id": {"type": "integer"},
                "workflow": {
                    "type": "object",
                    "required": ["key", "version"],
                    "properties": {"key": TEXT, "version": {"type": "integer"}},
                },
                "status": {"type": "string", "enum": Execution.Status.values},
                "event": TEXT,
                "context": {"type": "object"},
                "created_at": TIME,
                "started_at": NULLABLE_TIME,
                "finished_at": NULLABLE_TIME,
                "node": TEXT,
                "worker": TEXT,
                "attempts": {"type": "integer"},
                "error": TEXT,
                "jobs": {"type": "array", "items": {"$ref": "#/components/schemas/Job"}},
            },
        },
        "Task": {
            "type": "object",
            "required": ["id", "kind", "model", "format", "status", "progress", "links", "created_at"],
            "properties": {
                "id": {"type": "integer"},
                "kind": {"type": "string", "enum": AsyncTask.Kind.values},
                "model": TEXT,
                "format": {"type": "string", "enum": AsyncTask.Format.values},
                "status": {"type": "string", "enum": AsyncTask.Status.values},
                "owner": {"type": "string", "nullable": True},
                "progress": {
                    "type": "object",
                    "required": ["done", "total", "percent", "yielding", "pace"],
                    "properties": {
                        "done": {"type": "integer"},
                        "total": {"type": "integer", "nullable": True},
                        "percent": {"type": "integer", "nullable": True},
                        "yielding": {
                            "type": "boolean",
                            "description": "Running, and yielding the database to requests under pressure.",
                        },
                        "pace": {
                            "type": "number",
                            "nullable": True,
                            "description": "While yielding: the share of its time the task works (0-1).",
                        },
                    },
                },
                "summary": {"type": "object", "additionalProperties": {"type": "integer"}},
                "parameters": {"type": "object"},
                "source_name": TEXT,
                "error": TEXT,
                "cancel_requested": {"type": "boolean"},
                "node": TEXT,
                "worker": TEXT,
                "created_at": TIME,
                "started_at": NULLABLE_TIME,
                "finished_at": NULLABLE_TIME,
                "expires_at": NULLABLE_TIME,
                "links": {"type": "object", "additionalProperties": TEXT},
            },
        },
        "TaskPage": {
            "type": "object",
            "required": ["results", "page", "pages", "count"],
            "properties": {
                "results": {"type": "array", "items": {"$ref": "#/components/schemas/Task"}},
                "page": {"type": "integer"},
                "pages": {"type": "integer"},
                "count": {"type": "integer"},
            },
        },
    }
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "Service-split Django site: workflows and imports/exports",
            "version": "1",
            "description": (
                "Authenticate with 'Authorization: Bearer <token>' (admin: API tokens) or a session "
                "with the X-CSRFToken header. Workflow endpoints are for staff users; import/export "
                "endpoints for any active user with the model's permissions."
            ),
        },
        "security": [{"bearer": []}, {"session": []}],
        "paths": {**workflow_paths, **task_paths},
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "session": {"type": "apiKey", "in": "cookie", "name": "sessionid"},
            },
            "schemas": schemas,
        },
    }


@require_safe
@cache_control(max_age=300)
def openapi_json(request: HttpRequest) -> JsonResponse:
    """GET /api/openapi.json: the document (public: it names endpoints, not data)."""
    return JsonResponse(document())
