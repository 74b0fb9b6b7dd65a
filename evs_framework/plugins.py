"""Loading plugins and collecting what they provide into a catalogue.

Built-in plugins are ordinary plugin modules, written against the same hooks as a third-party package's; this
module's list of them is the one place they are named (a third-party package declares its own as `evs` entry
points). `EVS_PLUGINS=name,name` limits which third-party entry points load (an empty value loads none); built-ins
always load.

Every name a plugin provides can be written `<plugin>:<name>`. The bare name goes to its first provider, built-ins
before third-party plugins, so installing a plugin never takes a name away from EVS itself; two third-party
plugins giving the same name leave the bare name ambiguous (an error that names both, when it is used).
"""

from __future__ import annotations

import importlib
import os
from importlib.metadata import entry_points

import attrs
import pluggy
import structlog

from evs_framework import hookspecs
from evs_framework.errors import PluginError, did_you_mean
from evs_framework.failures import contained

log = structlog.get_logger(__name__)

ENTRY_POINT_GROUP = "evs"
LIMIT_ENV = "EVS_PLUGINS"
BUILTIN_PLUGINS = (
    "evs_plugins.sd15",
    "evs_plugins.animatediff",
    "evs_plugins.sdxl",
    "evs_plugins.wan",
    "evs_plugins.transfers",
    "evs_plugins.samplers",
    "evs_plugins.schedules",
    "evs_plugins.latent_ops",
    "evs_plugins.compositions",
    "evs_plugins.iv_mixed",
    "evs_plugins.videoelevator",
    "evs_plugins.local_weights",
    "evs_plugins.hub_cache",
    "evs_plugins.feature_injection",
    "evs_plugins.step_cache",
    "evs_plugins.metrics_basic",
    "evs_plugins.metrics_flow",
    "evs_plugins.metrics_weights",
    "evs_plugins.metrics_niqe",
    "evs_plugins.metrics_brisque",
)

# catalogue section -> the hook that fills it
CATALOGUE_HOOKS = {
    "backends": "register_backends",
    "transfers": "register_transfers",
    "samplers": "register_samplers",
    "noise_schedules": "register_noise_schedules",
    "prediction_types": "register_prediction_types",
    "latent_converters": "register_latent_converters",
    "compositions": "register_compositions",
    "latent_ops": "register_latent_ops",
    "metrics": "register_metrics",
    "settings": "register_settings",
}


def _section_types() -> dict[str, type]:
    """The type each typed catalogue section holds (imported late: these modules import torch)."""
    from evs_framework.latent_space import Converter
    from evs_framework.sampler import Sampler
    from evs_framework.transfer import Transfer

    return {"samplers": Sampler, "transfers": Transfer, "latent_converters": Converter}


@attrs.frozen
class Provided:
    value: object
    plugin: str


@attrs.define
class Catalogue:
    """Everything the loaded plugins provide, by section: `sections` by bare name, `qualified` by
    `<plugin>:<name>`, and the bare names that two third-party plugins give (`ambiguous`)."""

    sections: dict[str, dict[str, Provided]] = attrs.field(factory=lambda: {s: {} for s in CATALOGUE_HOOKS})
    qualified: dict[str, dict[str, Provided]] = attrs.field(factory=lambda: {s: {} for s in CATALOGUE_HOOKS})
    ambiguous: dict[str, dict[str, list[str]]] = attrs.field(factory=lambda: {s: {} for s in CATALOGUE_HOOKS})
    builtin: frozenset[str] = frozenset()  # names of the built-in plugins
    modules: dict[str, str] = attrs.field(factory=dict)  # plugin name -> its module's name (where its code is)

    def add(self, section: str, name: str, value: object, plugin: str) -> None:
        expected = _section_types().get(section)
        if expected is not None and not isinstance(value, expected):
            raise PluginError(f"plugin {plugin!r} registers {section[:-1]} {name!r} as a {type(value).__name__}, not an "
                              f"{expected.__module__}.{expected.__name__}; wrap it in one (hookspecs.py says how)")
        provided = Provided(value, plugin)
        self.qualified[section][f"{plugin}:{name}"] = provided
        entries, ambiguous = self.sections[section], self.ambiguous[section]
        if name in ambiguous:
            ambiguous[name].append(plugin)
        elif name not in entries:
            entries[name] = provided
        elif entries[name].plugin in self.builtin:
            if plugin in self.builtin:
                raise PluginError(f"built-in plugins {entries[name].plugin!r} and {plugin!r} both provide "
                                  f"{section[:-1]} {name!r}")
            log.warning("plugin_name_taken", section=section, name=name, plugin=plugin,
                        use=f"{plugin}:{name}", kept=entries[name].plugin)
        else:
            ambiguous[name] = [entries.pop(name).plugin, plugin]

    def ambiguity(self, section: str, name: str) -> str | None:
        """Why a bare name cannot be used: two third-party plugins provide it (None when they do not)."""
        if name not in self.ambiguous[section]:
            return None
        plugins = sorted(self.ambiguous[section][name])
        return (f"{section[:-1]} {name!r} is provided by plugins {' and '.join(map(repr, plugins))}; "
                f"say which: {' or '.join(f'{p}:{name}' for p in plugins)}")

    def get(self, section: str, name: str):
        if name in self.qualified[section]:
            return self.qualified[section][name].value
        if name in self.ambiguous[section]:
            raise PluginError(self.ambiguity(section, name))
        entries = self.sections[section]
        if name not in entries:
            raise PluginError(f"no plugin provides {section[:-1]} {name!r}{did_you_mean(name, entries)}; "
                              f"install the plugin that provides it (`evs plugins` lists what is loaded)")
        return entries[name].value

    def provider(self, section: str, name: str) -> str | None:
        """The plugin that provides `name` (bare or `plugin:name`) in `section`; None when none or several do."""
        provided = self.qualified[section].get(name) or self.sections[section].get(name)
        return provided.plugin if provided else None

    def has(self, section: str, name: str) -> bool:
        return name in self.sections[section] or name in self.qualified[section]

    def names(self, section: str) -> list[str]:
        return sorted(self.sections[section])


@attrs.frozen
class Plugins:
    manager: pluggy.PluginManager
    catalogue: Catalogue

    @property
    def hook(self):
        return self.manager.hook


def _allowed_entry_points() -> set[str] | None:
    limit = os.environ.get(LIMIT_ENV)
    if limit is None:
        return None
    return {name.strip() for name in limit.split(",") if name.strip()}


def _register_entry_points(manager: pluggy.PluginManager) -> None:
    allowed = _allowed_entry_points()
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.value in BUILTIN_PLUGINS or (allowed is not None and ep.name not in allowed):
            continue
        try:
            module = ep.load()
        except Exception as exc:  # a broken third-party plugin must say which one it is
            raise PluginError(f"plugin {ep.name!r} ({ep.value}) failed to import: {exc}; fix or uninstall it, "
                              f"or leave it out with {LIMIT_ENV}") from exc
        if manager.is_registered(module):
            continue
        if manager.get_plugin(ep.name) is not None:
            raise PluginError(f"two plugins are named {ep.name!r}: {manager.get_plugin(ep.name).__name__} and {ep.value}; "
                              f"uninstall one of them or leave one out with {LIMIT_ENV}")
        manager.register(module, name=ep.name)


def _contain_hooks(manager: pluggy.PluginManager) -> None:
    """Each plugin's hook implementations raise a PluginError naming the plugin and the hook in place of an
    exception of their own (wrappers, which pluggy drives as generators, are left as they are)."""
    for name in dir(manager.hook):
        caller = getattr(manager.hook, name)
        if name.startswith("_") or not isinstance(caller, pluggy.HookCaller):
            continue
        for impl in caller.get_hookimpls():
            if not (impl.hookwrapper or impl.wrapper):
                impl.function = contained(impl.function, impl.plugin_name, name)


def _fill_catalogue(manager: pluggy.PluginManager) -> Catalogue:
    builtin = frozenset(name.rsplit(".", 1)[-1] for name in BUILTIN_PLUGINS)
    modules = {name: getattr(module, "__name__", "") for name, module in manager.list_name_plugin()}
    catalogue = Catalogue(builtin=builtin, modules=modules)
    for section, hook_name in CATALOGUE_HOOKS.items():
        impls = getattr(manager.hook, hook_name).get_hookimpls()
        for impl in sorted(impls, key=lambda impl: impl.plugin_name not in builtin):  # built-ins first
            def register(name, value, _section=section, _plugin=impl.plugin_name):
                catalogue.add(_section, name, value, _plugin)

            impl.function(register=register)
    return catalogue


def load_plugins(extra=()) -> Plugins:
    """A fresh plugin manager with built-ins, allowed entry points and `extra` (module objects) registered."""
    manager = pluggy.PluginManager(ENTRY_POINT_GROUP)
    manager.add_hookspecs(hookspecs)
    for module_name in BUILTIN_PLUGINS:
        manager.register(importlib.import_module(module_name), name=module_name.rsplit(".", 1)[-1])
    _register_entry_points(manager)
    for module in extra:
        manager.register(module)
    manager.check_pending()
    _contain_hooks(manager)
    return Plugins(manager, _fill_catalogue(manager))


def describe(plugins: Plugins) -> list[tuple[str, str, list[str]]]:
    """(plugin name, section, names it provides) for each plugin, for `evs plugins`."""
    rows = []
    for name, module in plugins.manager.list_name_plugin():
        provided = {}
        catalogue = plugins.catalogue
        for section, entries in catalogue.qualified.items():
            # the bare name where this plugin holds it, else the one that reaches its entry
            mine = sorted(bare if catalogue.sections[section].get(bare) is provided_entry else qualified
                          for qualified, provided_entry in entries.items() if provided_entry.plugin == name
                          for bare in [qualified.split(":", 1)[1]])
            if mine:
                provided[section] = mine
        hooks = sorted(h.name for h in plugins.manager.get_hookcallers(module) or [] if h.name not in CATALOGUE_HOOKS.values())
        for section, names in provided.items():
            rows.append((name, section, names))
        if hooks:
            rows.append((name, "hooks", hooks))
        if not provided and not hooks:
            rows.append((name, "-", []))
    return rows
