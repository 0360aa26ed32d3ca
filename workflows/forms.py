"""Admin forms that build a node's or a trigger's JSON config from fields of its type.

A staff user picks the type and fills that type's fields (an expression, a collection with
filter rows of field / lookup / value, a URL ...); the form writes the JSON config the models
store and validate as before. Ticking "Edit as JSON" uses the config text as it is, for
power users and for configs the fields cannot show.

A value typed in a row or a body is JSON when it reads as JSON (``5``, ``true``, ``null``,
``[1, 2]``, ``"5"``) and text otherwise (``abc``, ``{{ $context.data.id }}``): ``decode`` and
``encode`` are exact inverses, so a config shown in the fields and saved again is unchanged.
"""

from __future__ import annotations

import json
from typing import Any

from django import forms
from django.core.exceptions import ValidationError
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe

from worker_mode import storable
from worker_mode.storable import StorableJSONFormField

from . import nodes, records, schedule, triggers
from .exceptions import ConfigError
from .models import Node, Workflow
from .outbound import METHODS

#: The fields of each node type, in the order they are shown.
NODE_FIELDS: dict[str, tuple[str, ...]] = {
    "condition": ("expression", "reject_on_false"),
    "calculation": ("expression",),
    "query": ("collection", "filter", "multiple", "fields", "order_by", "limit"),
    "create": ("collection", "values"),
    "update": ("collection", "filter", "values"),
    "delete": ("collection", "filter"),
    "http": ("method", "url", "headers", "body", "timeout", "ignore_fail"),
    "delay": ("seconds",),
    "end": ("status", "message"),
}
#: The fields of each trigger type (named ``trigger_<key>`` in the form).
TRIGGER_FIELDS: dict[str, tuple[str, ...]] = {
    Workflow.Trigger.COLLECTION: ("collection", "events", "changed_fields", "condition"),
    Workflow.Trigger.SCHEDULE: ("cron", "interval", "timezone", "start", "end"),
    Workflow.Trigger.MANUAL: (),
}


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON")


def _json(text: str) -> Any:
    """Strict JSON (no NaN or Infinity, which Python's parser would take), bounded nesting."""
    try:
        return json.loads(text, parse_constant=_not_json)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def decode(text: str) -> Any:
    """A typed value: JSON when the text reads as JSON, else the text itself."""
    try:
        return _json(text)
    except ValueError:
        return text


def encode(value: Any) -> str:
    """The text ``decode`` turns back into ``value``."""
    if isinstance(value, str):
        try:
            _json(value)
        except ValueError:
            return value
        return json.dumps(value, ensure_ascii=False)  # "5" stays text: quoted
    return json.dumps(value, ensure_ascii=False)


#: Defaults a config may spell out or leave out: equal either way when a saved config is shown.
_DEFAULTS = {"http": {"method": "POST"}, "end": {"status": "resolved"}}


def _same(kind: str, built: dict[str, Any], config: dict[str, Any]) -> bool:
    defaults = _DEFAULTS.get(kind, {})
    return {**defaults, **built} == {**defaults, **config}


# -- rows of field / lookup / value ---------------------------------------------------------------


class RowsWidget(forms.Widget):
    """Rows of inputs (a filter's field / lookup / value, a header's name / value), as many as
    there are plus two empty ones; the admin script adds more."""

    template_name = ""  # rendered in render()
    EXTRA = 2

    def __init__(self, columns: tuple[str, ...], attrs: dict | None = None) -> None:
        super().__init__(attrs)
        self.columns = columns

    def value_from_datadict(self, data, files, name):
        rows, index = [], 0
        while index < 500:  # a bound, not a limit anyone meets
            cells = [data.get(f"{name}__{column}_{index}") for column in self.columns]
            if all(cell is None for cell in cells):
                break
            rows.append([cell or "" for cell in cells])
            index += 1
        return rows

    def value_omitted_from_data(self, data, files, name):
        return f"{name}__{self.columns[0]}_0" not in data

    def _cell(self, name: str, column: str, index: int, value: str) -> str:
        field = f"{name}__{column}_{index}"
        if column == "lookup":
            options = format_html_join(
                "",
                '<option value="{}"{}>{}</option>',
                (
                    (lookup, " selected" if lookup == (value or "exact") else "", lookup)
                    for lookup in sorted(records.LOOKUPS)
                ),
            )
            return format_html('<select name="{}" class="wf-row-lookup">{}</select>', field, options)
        css = {"field": "wf-row-field", "name": "wf-row-name", "value": "wf-row-value"}[column]
        placeholder = {"field": "field", "name": "header", "value": "value or {{ variable }}"}[column]
        return format_html(
            '<input type="text" name="{}" value="{}" class="{}" placeholder="{}">',
            field,
            value,
            css,
            placeholder,
        )

    def _row(self, name: str, index: int, row: list[str]) -> str:
        cells = (
            self._cell(name, column, index, value) for column, value in zip(self.columns, row, strict=True)
        )
        return mark_safe("".join(cells))  # noqa: S308 (each cell is built with format_html)

    def render(self, name, value, attrs=None, renderer=None):
        rows = [list(row) for row in (value or [])]
        rows += [[""] * len(self.columns) for _ in range(self.EXTRA)]
        body = format_html_join(
            "",
            '<div class="wf-row" data-index="{}">{}</div>',
            (
                (
                    index,
                    mark_safe(
                        "".join(
                            self._cell(name, c, index, v) for c, v in zip(self.columns, row, strict=False)
                        )
                    ),
                )  # noqa: S308
                for index, row in enumerate(rows)
            ),
        )
        return format_html(
            '<div class="wf-rows" data-name="{}" data-columns="{}" data-wf-types="{}">{}'
            '<button type="button" class="wf-add-row button">Add a row</button></div>',
            name,
            " ".join(self.columns),
            self.attrs.get("data-wf-types", ""),
            body,
        )


class RowsField(forms.Field):
    widget = RowsWidget

    def __init__(self, columns: tuple[str, ...], **kwargs: Any) -> None:
        kwargs.setdefault("required", False)
        super().__init__(widget=RowsWidget(columns), **kwargs)
        self.columns = columns

    def has_changed(self, initial: Any, data: Any) -> bool:
        try:
            return self.to_python(data) != (initial or [])
        except ValidationError:
            return True

    def to_python(self, value: Any) -> list[list[str]]:
        if not value:
            return []
        if not isinstance(value, list):
            raise ValidationError("Enter rows.")
        # A row counts when its first cell is filled; a value without a field is an error (a
        # lookup alone is not: every row has one).
        rows = []
        for row in value:
            first, *rest = (str(cell) for cell in row)
            typed = [cell for column, cell in zip(self.columns[1:], rest, strict=True) if column != "lookup"]
            if first.strip():
                rows.append([first.strip(), *rest])
            elif any(cell.strip() for cell in typed):
                raise ValidationError(f"A row has a value but no {self.columns[0]}.")
        return rows


def _rows_to_dict(rows: list[list[str]], *, with_lookup: bool, typed: bool = True) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for row in rows:
        if with_lookup:
            name, lookup, value = row
            key = name if lookup in ("", "exact") else f"{name}__{lookup}"
        else:
            key, value = row
        if key in result:
            raise ValidationError(f"{key!r} appears twice.")
        result[key] = decode(value) if typed else value
    return result


def _filter_rows(spec: Any) -> list[list[str]]:
    rows = []
    for key, value in (spec or {}).items():
        name, _, lookup = str(key).partition("__")
        rows.append([name, lookup or "exact", encode(value)])
    return rows


def _value_rows(spec: Any, *, typed: bool = True) -> list[list[str]]:
    return [[str(key), encode(value) if typed else str(value)] for key, value in (spec or {}).items()]


def _one_line(rows: list[list[str]]) -> bool:
    """Whether a text input can show every cell (it drops line breaks)."""
    return not any("\n" in cell or "\r" in cell for row in rows for cell in row)


def _list_text(value: Any) -> str:
    return ", ".join(str(item) for item in value) if isinstance(value, list) else ""


def _text_list(text: str) -> list[str]:
    return [item.strip() for item in (text or "").split(",") if item.strip()]


def collection_choices() -> list[tuple[str, str]]:
    return [("", "---------"), *((label, label) for label in records.allowed_labels())]


def _types_attr(field: str, table: dict[str, tuple[str, ...]]) -> str:
    return " ".join(kind for kind, names in table.items() if field in names)


def json_view_field(what: str) -> forms.BooleanField:
    """The "Edit as JSON" box of a form whose fields build a JSON ``what``."""
    return forms.BooleanField(
        required=False,
        label="Edit as JSON",
        help_text=f"Use the JSON {what} below as it is, instead of the fields above.",
    )


class _TypedConfigForm(forms.ModelForm):
    """Shared by the node and the workflow form: per-type fields that build a JSON config."""

    #: The form field that holds the type, and the JSON field the config is saved in.
    type_field = ""
    config_field = ""

    _config_failed = False

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        kind = cleaned.get(self.type_field)
        if cleaned.get("advanced") or not kind:
            return cleaned
        if self.errors:  # a field of the type is wrong: said there, not again on the config
            self._config_failed = True
            return cleaned
        try:
            config = self.build_config(kind, cleaned)
            storable.check(config)  # said here: the JSON field it would go to is hidden
        except (ValidationError, storable.NotStorable) as exc:
            self._config_failed = True
            raise ValidationError(getattr(exc, "messages", [str(exc)])) from None
        cleaned[self.config_field] = config
        return cleaned

    def _get_validation_exclusions(self):
        exclude = super()._get_validation_exclusions()
        if self._config_failed:
            exclude.add(self.config_field)
        return exclude


class NodeForm(_TypedConfigForm):
    """A node: its type's fields, or its config as JSON ("Edit as JSON")."""

    type_field = "type"
    config_field = "config"

    expression = forms.CharField(
        required=False,
        strip=False,
        widget=forms.Textarea(attrs={"rows": 2, "cols": 70, "class": "wf-expression"}),
        help_text="e.g. {{ $jobs.product.quantity }} >= {{ $context.data.quantity }}",
    )
    reject_on_false = forms.BooleanField(required=False, label="Reject when false")
    collection = forms.ChoiceField(required=False, choices=collection_choices, label="Collection")
    filter = RowsField(("field", "lookup", "value"), label="Filter")
    values = RowsField(("field", "value"), label="Values")
    multiple = forms.BooleanField(required=False, label="All matching records (a list)")
    fields_ = forms.CharField(required=False, label="Fields", help_text="Comma-separated; empty: all.")
    order_by = forms.CharField(required=False, label="Order by", help_text="e.g. -created, sku")
    limit = forms.IntegerField(required=False, min_value=1, label="Limit")
    method = forms.ChoiceField(required=False, choices=[(m, m) for m in METHODS], initial="POST")
    url = forms.CharField(required=False, label="URL", widget=forms.TextInput(attrs={"size": 70}))
    headers = RowsField(("name", "value"), label="Headers")
    body = forms.CharField(
        required=False,
        strip=False,
        widget=forms.Textarea(attrs={"rows": 3, "cols": 70}),
        help_text='JSON, e.g. {"order": "{{ $context.data.id }}"}; other text is sent as text.',
    )
    timeout = forms.FloatField(required=False, min_value=0.1, label="Timeout (s)")
    ignore_fail = forms.BooleanField(required=False, label="Go on after an HTTP error status")
    seconds = forms.CharField(required=False, label="Seconds", help_text="A number, or a {{ variable }}.")
    status = forms.ChoiceField(required=False, choices=[(s, s) for s in nodes.END_STATUSES], label="End as")
    message = forms.CharField(
        required=False, strip=False, label="Message", widget=forms.TextInput(attrs={"size": 70})
    )
    advanced = json_view_field("config")

    class Meta:
        model = Node
        fields = ["key", "title", "type", "upstream", "branch", "config"]
        field_classes = {"config": StorableJSONFormField}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Each field says which types it belongs to (the admin script shows those of the type).
        # "fields" is a ModelForm attribute: that form field is fields_, labelled "Fields".
        self._tag_fields_named()
        self.fields["config"].required = False
        self.fields["config"].help_text = "The node's JSON config (what is saved)."
        if self.instance.pk is not None and not self.is_bound:
            self._show(self.instance.type, self.instance.config or {})

    def _tag_fields_named(self) -> None:
        for name, types in (
            (n, _types_attr(n, NODE_FIELDS)) for names in NODE_FIELDS.values() for n in names
        ):
            self.fields[_form_name(name)].widget.attrs["data-wf-types"] = types
        self.fields["config"].widget.attrs["data-wf-config"] = "1"

    def _show(self, kind: str, config: dict[str, Any]) -> None:
        """The fields' initial values from a saved config; JSON it cannot show opens as JSON."""
        initial = self.initial
        if not isinstance(config, dict):
            initial["advanced"] = True
            return
        simple = {
            "expression": str, "url": str, "message": str, "method": str, "status": str,
            "collection": str, "reject_on_false": bool, "multiple": bool, "ignore_fail": bool,
        }  # fmt: skip
        for key, value in config.items():
            if key in simple and isinstance(value, simple[key]):
                initial[key] = value
            elif key == "filter" and isinstance(value, dict):
                initial["filter"] = _filter_rows(value)
            elif key == "values" and isinstance(value, dict):
                initial["values"] = _value_rows(value)
            elif key == "headers" and isinstance(value, dict):
                initial["headers"] = _value_rows(value, typed=False)  # header values are text
            elif key in ("fields", "order_by") and isinstance(value, list):
                initial[_form_name(key)] = _list_text(value)
            elif (
                key in ("limit", "timeout") and isinstance(value, int | float) and not isinstance(value, bool)
            ):
                initial[key] = value
            elif key == "body":
                initial["body"] = (
                    json.dumps(value, ensure_ascii=False, indent=2)
                    if isinstance(value, dict | list)
                    else encode(value)
                )
            elif key == "seconds":
                initial["seconds"] = encode(value)
            else:
                initial["advanced"] = True  # a key or a value the fields cannot show
        rows = [*initial.get("filter", []), *initial.get("values", []), *initial.get("headers", [])]
        if not _one_line(rows):
            initial["advanced"] = True  # a text input would drop the line breaks
        if (
            kind
            and config
            and not _same(kind, self.build_config(kind, self._initial_cleaned(), check=False), config)
        ):
            initial["advanced"] = True

    def _initial_cleaned(self) -> dict[str, Any]:
        data = dict(self.initial)
        data["fields_"] = data.get("fields_", "")
        return data

    def build_config(self, kind: str, data: dict[str, Any], *, check: bool = True) -> dict[str, Any]:
        """The JSON config of a ``kind`` node from the form's fields (``data``)."""
        config: dict[str, Any] = {}
        names = NODE_FIELDS.get(kind, ())
        for name in names:
            value = data.get(_form_name(name))
            if name in ("expression", "url", "message"):
                if value:
                    config[name] = value
            elif name in ("reject_on_false", "multiple", "ignore_fail"):
                if value:
                    config[name] = True
            elif name == "collection":
                if value:
                    config["collection"] = value
                elif check:
                    raise ValidationError("Choose a collection.")
            elif name == "filter":
                rows = data.get("filter") or []
                if rows:
                    config["filter"] = _rows_to_dict(rows, with_lookup=True)
            elif name in ("values", "headers"):
                rows = data.get(name) or []
                if rows:
                    config[name] = _rows_to_dict(rows, with_lookup=False, typed=name == "values")
            elif name in ("fields", "order_by"):
                items = _text_list(value or "")
                if items:
                    config[name] = items
            elif name in ("limit", "timeout"):
                if value is not None and value != "":
                    config[name] = int(value) if name == "limit" or float(value).is_integer() else value
            elif name == "method":
                if value and value != "POST":
                    config["method"] = value
            elif name == "body":
                if value not in (None, ""):
                    config["body"] = decode(value)
            elif name == "seconds":
                if value not in (None, ""):
                    config["seconds"] = decode(value)
            elif name == "status" and value and value != "resolved":
                config["status"] = value
        if check:
            try:
                nodes.check_config(kind, config)
            except ConfigError as exc:
                raise ValidationError(exc.messages) from None
        return config


def _form_name(name: str) -> str:
    return "fields_" if name == "fields" else name


class WorkflowForm(_TypedConfigForm):
    """A workflow: its trigger's fields, or the trigger config as JSON."""

    type_field = "trigger_type"
    config_field = "trigger_config"

    trigger_collection = forms.ChoiceField(required=False, choices=collection_choices, label="Collection")
    trigger_events = forms.MultipleChoiceField(
        required=False,
        choices=[(e, e) for e in triggers.EVENTS],
        widget=forms.CheckboxSelectMultiple,
        label="Events",
    )
    trigger_changed_fields = forms.CharField(
        required=False,
        label="Changed fields",
        help_text="Updates only when one of these changed (comma-separated).",
    )
    trigger_condition = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 2, "cols": 70, "class": "wf-expression"}),
        label="Condition",
        help_text="e.g. {{ $context.data.quantity }} > 5; empty: always.",
    )
    trigger_cron = forms.CharField(required=False, label="Cron", help_text="e.g. */5 * * * *")
    trigger_interval = forms.IntegerField(
        required=False, min_value=1, max_value=schedule.MAX_INTERVAL, label="Every (seconds)"
    )
    trigger_timezone = forms.CharField(required=False, label="Time zone", help_text="e.g. Europe/Berlin")
    trigger_start = forms.CharField(
        required=False, label="Start", help_text="ISO time, e.g. 2026-01-31T08:00:00Z"
    )
    trigger_end = forms.CharField(required=False, label="End")
    advanced = json_view_field("trigger config")

    class Meta:
        model = Workflow
        fields = "__all__"
        field_classes = {"trigger_config": StorableJSONFormField}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for _kind, names in TRIGGER_FIELDS.items():
            for name in names:
                field = self.fields[f"trigger_{name}"]
                field.widget.attrs["data-wf-types"] = " ".join(
                    k for k, ns in TRIGGER_FIELDS.items() if name in ns
                )
        if "trigger_config" in self.fields:
            self.fields["trigger_config"].required = False
            self.fields["trigger_config"].widget.attrs["data-wf-config"] = "1"
        if self.instance.pk is not None and not self.is_bound:
            self._show(self.instance.trigger_type, self.instance.trigger_config)

    def _show(self, kind: str, config: Any) -> None:
        if not isinstance(config, dict):
            self.initial["advanced"] = True
            return
        for key, value in config.items():
            name = f"trigger_{key}"
            if key in ("events",) and isinstance(value, list):
                self.initial[name] = value
            elif key == "changed_fields" and isinstance(value, list):
                self.initial[name] = _list_text(value)
            elif self._plain_trigger_value(key, value):
                self.initial[name] = value
            else:
                self.initial["advanced"] = True
        try:
            if self.build_config(kind, self.initial, check=False) != config:
                self.initial["advanced"] = True
        except ValidationError:
            self.initial["advanced"] = True

    @staticmethod
    def _plain_trigger_value(key: str, value: Any) -> bool:
        if key == "interval":
            return isinstance(value, int) and not isinstance(value, bool)
        return key in ("collection", "condition", "cron", "timezone", "start", "end") and isinstance(
            value, str
        )

    def clean(self) -> dict[str, Any]:
        if "trigger_config" not in self.fields:  # locked version: the trigger is read-only
            return forms.ModelForm.clean(self)
        return super().clean()

    def build_config(self, kind: str, data: dict[str, Any], *, check: bool = True) -> dict[str, Any]:
        config: dict[str, Any] = {}
        if kind == Workflow.Trigger.COLLECTION:
            if data.get("trigger_collection"):
                config["collection"] = data["trigger_collection"]
            elif check:
                raise ValidationError("Choose the collection whose records trigger the workflow.")
            events = list(data.get("trigger_events") or [])
            if events:
                config["events"] = events
            elif check:
                raise ValidationError("Tick at least one event: created, updated or deleted.")
            changed = _text_list(data.get("trigger_changed_fields") or "")
            if changed:
                config["changed_fields"] = changed
            if data.get("trigger_condition"):
                config["condition"] = data["trigger_condition"]
        elif kind == Workflow.Trigger.SCHEDULE:
            for key in ("cron", "timezone", "start", "end"):
                if data.get(f"trigger_{key}"):
                    config[key] = data[f"trigger_{key}"]
            if data.get("trigger_interval") not in (None, ""):
                config["interval"] = int(data["trigger_interval"])
        if check:
            try:
                triggers.check_config(kind, config, sync=bool(data.get("sync", self.instance.sync)))
            except ConfigError as exc:
                raise ValidationError(exc.messages) from None
        return config
