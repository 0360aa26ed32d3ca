/* Workflows in the admin, without a build step: show the fields of the chosen type, add filter
   rows, suggest a collection's fields, insert variables where the cursor is, and keep the
   variable picker in step with the form (the server computes what each node may use). */
(function () {
  "use strict";

  function readJSON(id) {
    var node = document.getElementById(id);
    return node ? JSON.parse(node.textContent) : null;
  }

  // Read when the page has loaded (this script runs in <head>, before the data it reads).
  var collections = {};
  var variablesURL = null;
  var lastFocused = new WeakMap();

  function scopeOf(el) {
    return el.closest(".inline-related") || el.closest(".wf-trigger-settings") || document;
  }

  function isTemplate(scope) {
    return scope.id && scope.id.indexOf("-empty") !== -1;
  }

  /* -- fields of the chosen type ----------------------------------------------------------- */

  function typeSelect(scope) {
    return scope.querySelector('select[name$="-type"]') || scope.querySelector('select[name="trigger_type"]');
  }

  function advancedBox(scope) {
    return scope.querySelector('input[type=checkbox][name$="advanced"]');
  }

  function applyType(scope) {
    var select = typeSelect(scope);
    if (!select) return;
    var kind = select.value;
    var box = advancedBox(scope);
    var advanced = box ? box.checked : false;
    scope.querySelectorAll("[data-wf-types]").forEach(function (el) {
      var row = el.closest(".fieldBox") || el.closest(".form-row");
      if (!row || !scope.contains(row)) return;
      var types = (el.getAttribute("data-wf-types") || "").split(" ");
      row.classList.toggle("wf-hidden", advanced || types.indexOf(kind) === -1);
    });
    var config = scope.querySelector("[data-wf-config]");
    if (config) {
      var row = config.closest(".form-row");
      if (row) row.classList.toggle("wf-hidden", !advanced);
    }
  }

  /* -- rows of a filter, values, headers --------------------------------------------------- */

  function addRow(button) {
    var rows = button.closest(".wf-rows");
    var all = rows.querySelectorAll(".wf-row");
    var last = all[all.length - 1];
    var copy = last.cloneNode(true);
    var index = all.length;
    copy.setAttribute("data-index", index);
    copy.querySelectorAll("input, select").forEach(function (input) {
      input.name = input.name.replace(/_\d+$/, "_" + index);
      if (input.tagName === "SELECT") input.value = "exact";
      else input.value = "";
    });
    rows.insertBefore(copy, button);
    var first = copy.querySelector("input");
    if (first) first.focus();
  }

  function datalistFor(label) {
    var id = "wf-fields-" + label.replace(/[^A-Za-z0-9_-]/g, "-");
    if (!document.getElementById(id)) {
      var list = document.createElement("datalist");
      list.id = id;
      (collections[label] || []).forEach(function (name) {
        var option = document.createElement("option");
        option.value = name;
        list.appendChild(option);
      });
      document.body.appendChild(list);
    }
    return id;
  }

  function applyCollection(scope) {
    var select = scope.querySelector('select[name$="collection"]');
    var label = select ? select.value : "";
    scope.querySelectorAll("input.wf-row-field").forEach(function (input) {
      if (label) input.setAttribute("list", datalistFor(label));
      else input.removeAttribute("list");
    });
  }

  /* -- the variable picker ----------------------------------------------------------------- */

  function insert(scope, text) {
    var target = lastFocused.get(scope);
    if (!target || !scope.contains(target) || target.closest(".wf-hidden")) {
      target = Array.prototype.find.call(
        scope.querySelectorAll("textarea, input[type=text]"),
        function (el) { return !el.closest(".wf-hidden") && !el.readOnly && el.offsetParent !== null && !/-(key|title|upstream)$/.test(el.name); }
      );
    }
    if (!target) return;
    var start = target.selectionStart != null ? target.selectionStart : target.value.length;
    var end = target.selectionEnd != null ? target.selectionEnd : target.value.length;
    target.value = target.value.slice(0, start) + text + target.value.slice(end);
    target.focus();
    target.selectionStart = target.selectionEnd = start + text.length;
    target.dispatchEvent(new Event("input", { bubbles: true }));
    lastFocused.set(scope, target);
  }

  function renderPicker(container, groups, empty) {
    container.textContent = "";
    container.classList.add("wf-picker");
    if (!groups) {
      container.textContent = empty;
      return;
    }
    var help = document.createElement("div");
    help.className = "wf-picker-help";
    help.textContent = "Click a variable to insert it where the cursor is (or into the first field).";
    container.appendChild(help);
    Object.keys(groups).forEach(function (title) {
      var group = document.createElement("div");
      group.className = "wf-var-group";
      var heading = document.createElement("div");
      heading.className = "wf-var-title";
      heading.textContent = title;
      group.appendChild(heading);
      groups[title].forEach(function (variable) {
        var button = document.createElement("button");
        button.type = "button";
        button.className = "wf-var";
        button.setAttribute("data-insert", variable.placeholder);
        button.title = variable.label;
        button.textContent = variable.path;
        group.appendChild(button);
      });
      container.appendChild(group);
    });
  }

  function value(scope, suffix) {
    var el = scope.querySelector('[name$="' + suffix + '"]');
    return el ? el.value : "";
  }

  function nodeScopes() {
    return Array.prototype.filter.call(document.querySelectorAll(".inline-related"), function (scope) {
      if (isTemplate(scope) || !typeSelect(scope)) return false;
      var del = scope.querySelector('input[name$="-DELETE"]');
      return !(del && del.checked);
    });
  }

  function state() {
    var trigger = document.querySelector(".wf-trigger-settings");
    var triggerType = trigger ? value(trigger, "trigger_type") : "";
    var events = [];
    if (trigger) {
      trigger.querySelectorAll('input[name="trigger_events"]:checked').forEach(function (box) { events.push(box.value); });
    }
    return {
      trigger_type: triggerType,
      trigger_config: trigger ? { collection: value(trigger, "trigger_collection"), events: events } : {},
      nodes: nodeScopes().map(function (scope) {
        var multiple = scope.querySelector('input[name$="-multiple"]');
        var fields = value(scope, "-fields_");
        return {
          key: value(scope, "-key"),
          type: value(scope, "-type"),
          upstream: value(scope, "-upstream"),
          branch: value(scope, "-branch"),
          config: {
            collection: value(scope, "-collection"),
            multiple: multiple ? multiple.checked : false,
            fields: fields ? fields.split(",").map(function (s) { return s.trim(); }).filter(Boolean) : []
          }
        };
      })
    };
  }

  var pending = null;

  function refresh() {
    if (!variablesURL) return;
    clearTimeout(pending);
    pending = setTimeout(function () {
      var token = document.querySelector("input[name=csrfmiddlewaretoken]");
      fetch(variablesURL, {
        method: "POST",
        credentials: "same-origin",
        headers: { "Content-Type": "application/json", "X-CSRFToken": token ? token.value : "" },
        body: JSON.stringify(state())
      })
        .then(function (response) { return response.ok ? response.json() : null; })
        .then(function (result) {
          if (!result) return;
          nodeScopes().forEach(function (scope) {
            var container = scope.querySelector(".wf-picker") || scope.querySelector(".field-variables .readonly");
            if (!container) return;
            var key = value(scope, "-key");
            renderPicker(container, key ? result.nodes[key] : null, "Give the node a key: the variables it may use appear here.");
          });
          var trigger = document.querySelector(".wf-trigger-settings");
          if (trigger) {
            var holder = trigger.querySelector(".wf-trigger-picker");
            var condition = trigger.querySelector('[name="trigger_condition"]');
            if (!holder && condition) {
              holder = document.createElement("div");
              holder.className = "wf-trigger-picker";
              var row = condition.closest(".form-row");
              row.appendChild(holder);
            }
            if (holder) renderPicker(holder, result.trigger, "");
          }
        })
        .catch(function () { /* the picker is a help: the form works without it */ });
    }, 250);
  }

  /* -- wiring -------------------------------------------------------------------------------- */

  function setup(scope) {
    applyType(scope);
    applyCollection(scope);
  }

  document.addEventListener("DOMContentLoaded", function () {
    collections = readJSON("wf-collections") || {};
    variablesURL = readJSON("wf-variables-url");
    var trigger = document.querySelector('select[name="trigger_type"]');
    if (trigger) setup(scopeOf(trigger));
    document.querySelectorAll(".inline-related").forEach(function (scope) {
      if (!isTemplate(scope)) setup(scope);
    });
    refresh();
  });

  document.addEventListener("formset:added", function (event) {
    setup(event.target);
    refresh();
  });

  document.addEventListener("focusin", function (event) {
    var el = event.target;
    if (el.matches && el.matches("textarea, input[type=text]")) lastFocused.set(scopeOf(el), el);
  });

  document.addEventListener("change", function (event) {
    var el = event.target;
    var scope = scopeOf(el);
    if (/(-type|trigger_type|advanced)$/.test(el.name || "")) applyType(scope);
    if (/collection$/.test(el.name || "")) applyCollection(scope);
    if (/(-key|-type|-upstream|-branch|collection|-multiple|-fields_|trigger_type|trigger_events|-DELETE)$/.test(el.name || "")) refresh();
  });

  document.addEventListener("input", function (event) {
    if (/(-key|-upstream|-fields_)$/.test(event.target.name || "")) refresh();
  });

  document.addEventListener("click", function (event) {
    var el = event.target;
    if (el.classList.contains("wf-add-row")) {
      event.preventDefault();
      addRow(el);
    } else if (el.classList.contains("wf-var")) {
      event.preventDefault();
      insert(scopeOf(el), el.getAttribute("data-insert"));
    }
  });
})();
