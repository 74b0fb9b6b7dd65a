"""ComfyUI's rules for node packs, written down for tests that cannot install ComfyUI (it is not on PyPI).

What ComfyUI does with a node pack, after its execution.py and its front end, in our own words:
- `load_pack`: custom_nodes/<folder>/__init__.py is imported as a package named after the folder.
- `declaration_problems`: what a node class must declare for /object_info and the editor.
- `validate_prompt`: every input of every node checked before anything runs (execution.py's validate_inputs).
- `workflow_prompt`: a saved workflow (the editor's format) turned into the prompt the editor queues.
- `execute`: the prompt's nodes run in dependency order under torch.inference_mode, each FUNCTION called with its
  inputs as keywords; a node may return a tuple or {"ui": ..., "result": tuple}.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch

WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN")
CONVERSIONS = {"INT": int, "FLOAT": float, "STRING": str, "BOOLEAN": bool}  # as ComfyUI converts constant inputs
SEED_CONTROLS = ("fixed", "increment", "decrement", "randomize")  # the editor's "control after generate" widget
INPUT_OPTIONS = {"default", "min", "max", "step", "round", "tooltip", "multiline", "dynamicPrompts", "forceInput",
                 "label_on", "label_off", "placeholder", "display", "control_after_generate", "lazy", "rawLink",
                 "options"}


def load_pack(folder: Path, name: str):
    """The pack imported as ComfyUI's loader does it: the folder's __init__.py as package `name`."""
    spec = importlib.util.spec_from_file_location(name, folder / "__init__.py", submodule_search_locations=[str(folder)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def sections(node_class) -> dict[str, dict]:
    declared = node_class.INPUT_TYPES()
    return {section: declared.get(section, {}) for section in ("required", "optional")}


def is_widget(input_type, options: dict) -> bool:
    """Whether the editor draws the input as a widget (a value in widgets_values) rather than a socket."""
    return isinstance(input_type, list) or (input_type in WIDGET_TYPES and not options.get("forceInput"))


def widget_names(node_class) -> list[str]:
    """The node's widgets in the editor's order: required inputs, then optional ones, each in declaration order."""
    return [name for inputs in sections(node_class).values() for name, (kind, *rest) in inputs.items()
            if is_widget(kind, rest[0] if rest else {})]


def has_seed_control(name: str, options: dict) -> bool:
    return name in ("seed", "noise_seed") or bool(options.get("control_after_generate"))


def declaration_problems(node_class) -> list[str]:
    """What keeps ComfyUI from listing or drawing the class; tooltips are asked of every input and output here."""
    problems = []
    declared = node_class.INPUT_TYPES()
    if not isinstance(declared, dict) or "required" not in declared:
        return ["INPUT_TYPES() must return a dict with a 'required' section"]
    problems += [f"unknown INPUT_TYPES section {s!r}" for s in declared if s not in ("required", "optional", "hidden")]
    for section, inputs in sections(node_class).items():
        for name, declaration in inputs.items():
            if not isinstance(declaration, tuple) or not 1 <= len(declaration) <= 2:
                problems.append(f"{section}.{name}: not a (type,) or (type, options) tuple")
                continue
            kind, options = declaration[0], declaration[1] if len(declaration) == 2 else {}
            problems += [f"{section}.{name}: unknown option {key!r}" for key in options if key not in INPUT_OPTIONS]
            if not options.get("tooltip"):
                problems.append(f"{section}.{name}: no tooltip")
            if isinstance(kind, list):
                if not kind or not all(isinstance(choice, str) for choice in kind):
                    problems.append(f"{section}.{name}: a choice list must hold strings")
                elif "default" in options and options["default"] not in kind:
                    problems.append(f"{section}.{name}: default {options['default']!r} is not a choice")
            elif not isinstance(kind, str):
                problems.append(f"{section}.{name}: type {kind!r} is neither a type name nor a choice list")
            elif kind in ("INT", "FLOAT"):
                low, high, default = options.get("min"), options.get("max"), options.get("default")
                if default is None or not isinstance(default, (int, float)):
                    problems.append(f"{section}.{name}: a number needs a numeric default")
                elif (low is not None and default < low) or (high is not None and default > high):
                    problems.append(f"{section}.{name}: default {default} is outside [{low}, {high}]")
                if kind == "INT" and not all(isinstance(v, int) for v in (low, high, default) if v is not None):
                    problems.append(f"{section}.{name}: an INT's default, min and max must be integers")
    returns = node_class.RETURN_TYPES
    if not isinstance(returns, tuple) or not all(isinstance(t, str) for t in returns):
        problems.append("RETURN_TYPES must be a tuple of type names")
    for attribute in ("RETURN_NAMES", "OUTPUT_TOOLTIPS"):
        if len(getattr(node_class, attribute, returns)) != len(returns):
            problems.append(f"{attribute} must have one entry per output")
    if not callable(getattr(node_class, node_class.FUNCTION, None)):
        problems.append(f"FUNCTION {node_class.FUNCTION!r} is not a method of the class")
    if not isinstance(getattr(node_class, "CATEGORY", None), str) or not getattr(node_class, "DESCRIPTION", ""):
        problems.append("a node needs a CATEGORY and a DESCRIPTION")
    return problems


def types_match(received: str, expected: str) -> bool:
    """A link's type fits an input: equal, "*" on either side, or overlapping comma-separated type sets."""
    if received == expected or "*" in (received, expected):
        return True
    return bool({t.strip() for t in received.split(",")} & {t.strip() for t in expected.split(",")})


def validate_node(prompt: dict, node_id: str, classes: dict) -> list[dict]:
    """The problems of one node's inputs, in ComfyUI's error records ({"type", "message", "details"}); constant
    inputs are converted in place (INT, FLOAT, STRING, BOOLEAN) as ComfyUI converts them."""
    node = prompt[node_id]
    inputs, node_class = node["inputs"], classes[node["class_type"]]
    errors = []

    def error(kind: str, message: str, details: str):
        errors.append({"type": kind, "message": message, "details": details})

    for section, declared in sections(node_class).items():
        for name, (kind, *rest) in declared.items():
            options = rest[0] if rest else {}
            if name not in inputs:
                if section == "required":
                    error("required_input_missing", "Required input is missing", name)
                continue
            value = inputs[name]
            if isinstance(value, list):
                if len(value) != 2 or value[0] not in prompt:
                    error("bad_linked_input", "Bad linked input, must be a length-2 list of [node_id, slot_index]",
                          name)
                    continue
                source = classes[prompt[value[0]]["class_type"]]
                received = source.RETURN_TYPES[value[1]]
                if not types_match(received, kind if isinstance(kind, str) else "COMBO"):
                    error("return_type_mismatch", "Return type mismatch between linked nodes",
                          f"{name}, received_type({received}) mismatch input_type({kind})")
                continue
            convert = CONVERSIONS.get(kind) if isinstance(kind, str) else None
            try:
                value = convert(value) if convert else value
            except (TypeError, ValueError) as exc:
                error("invalid_input_type", f"Failed to convert an input value to a {kind} value",
                      f"{name}, {value}, {exc}")
                continue
            inputs[name] = value
            if "min" in options and value < options["min"]:
                error("value_smaller_than_min", f"Value {value} smaller than min of {options['min']}", name)
            elif "max" in options and value > options["max"]:
                error("value_bigger_than_max", f"Value {value} bigger than max of {options['max']}", name)
            elif isinstance(kind, list) and value not in kind:
                error("value_not_in_list", "Value not in list", f"{name}: '{value}' not in {kind}")
    return errors


def validate_prompt(prompt: dict, classes: dict) -> dict[str, list[dict]]:
    """Every node's problems, by node id (an unknown class_type is one); {} when the prompt may run."""
    unknown = {node_id: [{"type": "invalid_prompt", "message": f"node {node['class_type']} does not exist",
                          "details": node_id}]
               for node_id, node in prompt.items() if node["class_type"] not in classes}
    if unknown:
        return unknown
    if not any(getattr(classes[node["class_type"]], "OUTPUT_NODE", False) for node in prompt.values()):
        return {"": [{"type": "prompt_no_outputs", "message": "Prompt has no outputs", "details": ""}]}
    found = {node_id: validate_node(prompt, node_id, classes) for node_id in prompt}
    return {node_id: errors for node_id, errors in found.items() if errors}


def execute(prompt: dict, classes: dict) -> tuple[dict, dict]:
    """Run a validated prompt: (each node's outputs, each output node's "ui" record), by node id."""
    outputs, shown = {}, {}

    def run(node_id: str):
        if node_id in outputs:
            return
        node = prompt[node_id]
        for value in node["inputs"].values():
            if isinstance(value, list):
                run(value[0])
        node_class = classes[node["class_type"]]
        kwargs = {name: outputs[value[0]][value[1]] if isinstance(value, list) else value
                  for name, value in node["inputs"].items()}
        returned = getattr(node_class(), node_class.FUNCTION)(**kwargs)
        if isinstance(returned, dict):
            shown[node_id] = returned.get("ui", {})
            returned = returned.get("result", ())
        outputs[node_id] = returned

    with torch.inference_mode():
        for node_id, node in prompt.items():
            if getattr(classes[node["class_type"]], "OUTPUT_NODE", False):
                run(node_id)
    return outputs, shown


def workflow_prompt(workflow: dict, classes: dict) -> dict:
    """The prompt (API format) the editor queues for a saved workflow: widget values by input name (a list in widget
    order, with a seed's control value after it; or a mapping by name, as VideoHelperSuite saves its nodes') and links
    as [source node id, output slot]."""
    links = {link[0]: link for link in workflow["links"]}
    prompt = {}
    for node in workflow["nodes"]:
        node_class = classes[node["type"]]
        declared = {name: d for inputs in sections(node_class).values() for name, d in inputs.items()}
        values = node.get("widgets_values", [])
        if isinstance(values, dict):
            inputs = {name: values[name] for name in widget_names(node_class) if name in values}
        else:
            inputs, remaining = {}, list(values)
            for name in widget_names(node_class):
                inputs[name] = remaining.pop(0)
                if has_seed_control(name, declared[name][1] if len(declared[name]) > 1 else {}):
                    control = remaining.pop(0)
                    assert control in SEED_CONTROLS, f"node {node['id']}: {control!r} after {name}"
            assert not remaining, f"node {node['id']} ({node['type']}): widget values left over: {remaining}"
        for socket in node.get("inputs", []):
            if socket.get("link") is not None:
                _, source, slot, *_ = links[socket["link"]]
                inputs[socket["name"]] = [str(source), slot]
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt
