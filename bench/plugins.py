"""Plugins: modules (or ``.py`` files) that register implementations or tasks, imported by the CLI and by
every worker before a sweep's points are expanded or measured."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from pathlib import Path


class PluginError(ValueError):
    """A plugin could not be imported; the message names it and why."""




def import_plugins(plugins: list[str], base_dir: Path | None = None) -> None:
    """Import each plugin: an importable module name (``my_package.tlstm``) or a ``.py`` path (relative to
    ``base_dir``, the sweep file's folder). Nothing else is imported: the current directory is not put on
    ``sys.path``, so a stray ``reports.py`` where the user runs is never executed."""
    for plugin in plugins:
        try:
            if plugin.endswith(".py"):
                path = Path(plugin)
                if not path.is_absolute() and base_dir is not None:
                    path = base_dir / path
                path = path.resolve()
                module_name = "tlstm_plugin_" + hashlib.sha1(str(path).encode()).hexdigest()[:12]
                if module_name in sys.modules:  # importing twice would register twice
                    continue
                spec = importlib.util.spec_from_file_location(module_name, path)
                if spec is None or spec.loader is None or not path.is_file():
                    raise FileNotFoundError(f"no such file {path}")
                module = importlib.util.module_from_spec(spec)
                sys.modules[module_name] = module
                spec.loader.exec_module(module)
            else:
                importlib.import_module(plugin)
        except SystemExit as exc:
            raise PluginError(f"importing {plugin!r} called sys.exit({exc.code!r})") from None
        except Exception as exc:
            raise PluginError(f"cannot import {plugin!r}: {exc!r}") from exc
