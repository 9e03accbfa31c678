"""User plugins: a user's own embedders, fusion schemes and presets, registered by name next to the
built-in ones so that ``list``, ``run``, ``profile``, ``report`` and ``compare`` treat them alike.

A plugin is Python code that registers into the three registries when it is imported::

    from architectures import PRESETS, Preset
    from feature_extractors import EMBEDDERS, EmbedderSpec

    EMBEDDERS.register("my-stem", EmbedderSpec("my-stem", "visual", "patch", MyStemConfig,
                                               MyStem, "what it is"))
    PRESETS.register("my-model", Preset(name="my-model", visual=MyStemConfig(), ...))

It reaches vlbench in one of two ways:

* a file, ``--plugin path/to/file.py`` (repeatable), imported under a private module name; every
  worker process imports the same files before it builds a model, so a run's cases see what the
  command line saw (``LaunchOptions.plugins``, recorded with the run for ``--resume``);
* an installed distribution's entry point in the group ``vlbench.plugins``
  (``[options.entry_points] vlbench.plugins = mine = my_package.vlbench_plugin``): a module,
  imported, or a callable, called with no arguments. Entry points load in every vlbench process.

Loading is idempotent per process. A plugin that fails to import, or registers a name that exists
already, is a one-line ``PluginError`` (exit status 2 on the command line): whatever it raises,
``SystemExit`` and ``KeyboardInterrupt`` included (a plugin cannot end the command as if it had
succeeded). A real Ctrl-C while a plugin imports still ends the command as an interrupt
(``vlbench.interrupts``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from collections.abc import Iterable
from importlib.metadata import entry_points
from pathlib import Path

from . import interrupts

ENTRY_POINT_GROUP = "vlbench.plugins"

_loaded_files: dict[str, str] = {}  # resolved path -> module name
_entry_points_loaded = False


class PluginError(ValueError):
    """A plugin that cannot be loaded; the message is one line."""


def load_plugins(paths: Iterable[str] = (), *, entry_point_plugins: bool = True) -> list[str]:
    """Import the entry-point plugins (once) and each plugin file (once); returns the module
    names of the files, in order."""
    if entry_point_plugins:
        load_entry_points()
    return [load_plugin_file(p) for p in paths]


def load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            loaded = ep.load()
            if callable(loaded):
                loaded()
        except BaseException as exc:  # noqa: BLE001 - any failure of user code is one line
            raise _plugin_error(f"plugin entry point {ep.name!r} ({ep.value})", exc) from None


def load_plugin_file(path: str | Path) -> str:
    """Import one plugin file under a name private to its resolved path."""
    resolved = Path(path).expanduser().resolve()
    key = str(resolved)
    if key in _loaded_files:
        return _loaded_files[key]
    if not resolved.is_file():
        raise PluginError(f"plugin file {path} does not exist")
    if resolved.suffix != ".py":
        raise PluginError(f"plugin file {path} is not a .py file")
    digest = hashlib.sha1(key.encode()).hexdigest()[:10]
    name = f"vlbench_plugin_{resolved.stem}_{digest}"
    spec = importlib.util.spec_from_file_location(name, resolved)
    if spec is None or spec.loader is None:
        raise PluginError(f"plugin file {path} cannot be imported")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look their module up by name
    try:
        spec.loader.exec_module(module)
    except BaseException as exc:  # noqa: BLE001 - SystemExit and KeyboardInterrupt too
        del sys.modules[name]
        raise _plugin_error(f"plugin file {path}", exc) from None
    _loaded_files[key] = name
    return name


def resolve_plugin_paths(paths: Iterable[str]) -> tuple[str, ...]:
    """Absolute paths, checked to exist: what a run records and its workers import."""
    out = []
    for p in paths:
        resolved = Path(p).expanduser().resolve()
        if not resolved.is_file():
            raise PluginError(f"plugin file {p} does not exist")
        out.append(str(resolved))
    return tuple(out)


def _plugin_error(what: str, exc: BaseException) -> BaseException:
    """The error to raise for a plugin that raised ``exc``: a ``PluginError`` naming it, unless
    ``exc`` is the user's Ctrl-C, which stays an interrupt."""
    if isinstance(exc, KeyboardInterrupt) and interrupts.received():
        return exc
    if isinstance(exc, SystemExit):
        return PluginError(f"{what}: called sys.exit({exc.code!r}) while loading; a plugin "
                           "only registers models")
    return PluginError(f"{what}: {_one_line(exc)}")


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
