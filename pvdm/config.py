"""Experiment configuration: OmegaConf YAML, validated against the schema shipped in the package
(pvdm/schemas/config.schema.yaml).

The same schema is applied by the Snakefile and by the pvdm CLI, so an unknown key or a wrong
type fails before any job starts, with a message naming the key and the file. Defaults live in the
schema only and are filled in by validation.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from omegaconf import OmegaConf

SCHEMA = resources.files("pvdm") / "schemas" / "config.schema.yaml"


class ConfigError(ValueError):
    pass


@lru_cache(maxsize=1)
def schema() -> dict[str, Any]:
    return yaml.safe_load(SCHEMA.read_text())


def _default_filling_validator() -> type:
    """A Draft 2020-12 validator that also writes schema defaults into the instance."""
    base = jsonschema.Draft202012Validator
    validate_properties = base.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, sub_schema):  # noqa: ANN001
        if isinstance(instance, dict):
            for name, prop in properties.items():
                if "default" in prop and name not in instance:
                    instance[name] = json.loads(json.dumps(prop["default"]))
        yield from validate_properties(validator, properties, instance, sub_schema)

    return jsonschema.validators.extend(base, {"properties": set_defaults})


def _format_error(err: jsonschema.ValidationError, source: str) -> str:
    path = ".".join(str(p) for p in err.absolute_path) or "<top level>"
    if err.validator == "additionalProperties":
        allowed = sorted(err.schema.get("properties", {}))
        extra = sorted(set(err.instance) - set(allowed)) if isinstance(err.instance, dict) else []
        keys = ", ".join(f"{path}.{k}" if path != "<top level>" else k for k in extra)
        hint = f" (allowed here: {', '.join(allowed)})" if allowed else ""
        return f"{source}: unknown key {keys}{hint}"
    if err.validator == "unevaluatedProperties":
        extra = re.findall(r"'([^']+)'", err.message.split("(", 1)[-1])
        keys = ", ".join(f"{path}.{k}" if path != "<top level>" else k for k in extra)
        return f"{source}: unknown key {keys}"
    return f"{source}: {path}: {err.message}"


def validate(cfg: dict[str, Any], source: str = "<config>", definition: str | None = None) -> dict[str, Any]:
    """Validate (and fill defaults into) ``cfg`` in place; ``definition`` picks a $defs entry."""
    root = schema()
    sub = {"$ref": f"#/$defs/{definition}", "$defs": root["$defs"]} if definition else root
    validator = _default_filling_validator()(sub)
    errors = sorted(validator.iter_errors(cfg), key=lambda e: (len(e.absolute_path), str(e.absolute_path)))
    # A sub-schema that fails (a wrong type, a negative value) leaves all its keys "unevaluated", so
    # jsonschema also reports every valid key of that section as unknown: report the real error only.
    real = [e for e in errors if e.validator != "unevaluatedProperties"]
    errors = [
        e for e in errors
        if e.validator != "unevaluatedProperties"
        or not any(list(r.absolute_path)[: len(e.absolute_path)] == list(e.absolute_path) for r in real)
    ]
    if errors:
        raise ConfigError("\n".join(_format_error(e, source) for e in errors[:10]))
    return cfg


def check_yaml(path: str | Path) -> None:
    """Parse a config file strictly: a missing file, bad YAML or a duplicated key is a ConfigError
    naming the file and line (Snakemake's own loader keeps the last of two duplicated keys)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        OmegaConf.load(path)
    except Exception as e:
        raise ConfigError(f"{path}: cannot parse YAML: {e}".replace("\n", " ")) from None


def config_source(files: Sequence[str | Path], overrides: Mapping[str, Any] | Sequence[str] = ()) -> str:
    """How a config was assembled, for error messages: the files, then the command-line values."""
    source = " + ".join(str(f) for f in files) or "config"
    if overrides:
        items = overrides.items() if isinstance(overrides, Mapping) else [(o, None) for o in overrides]
        shown = ", ".join(k if v is None else f"{k}={v}" for k, v in items)
        source += f" (with command-line values: {shown})"
    return source


def type_command_line_values(cfg: dict[str, Any], values: Mapping[str, Any]) -> None:
    """Give the nested ``--config`` values of Snakemake their YAML types, in place in ``cfg``.

    Snakemake reads a nested value (``--config 'experiments={ucf101: {sampling: {sampler: {steps: 20}}}}'``)
    with YAML's BaseLoader, so every leaf arrives as a string ('20'); top-level values it types itself.
    A leaf that is still the string Snakemake read becomes an int, float, bool or null where its text is one."""
    for key, value in values.items():
        if isinstance(value, Mapping) and isinstance(cfg.get(key), dict):
            type_command_line_values(cfg[key], value)
        elif isinstance(value, str) and cfg.get(key) == value:
            cfg[key] = _scalar(value)
        elif isinstance(value, list) and cfg.get(key) == value:
            cfg[key] = [_scalar(v) if isinstance(v, str) else v for v in value]


def _scalar(text: str) -> Any:
    for parse in (int, float):
        try:
            return parse(text)
        except ValueError:
            pass
    loaded = yaml.safe_load(text) if text.strip() else text
    return loaded if loaded is None or isinstance(loaded, bool) else text


def load_config(paths: str | Path | Sequence[str | Path], overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Load one or more YAML files (later ones override earlier ones), apply dotted ``key=value``
    overrides, validate, fill defaults. Returns plain dicts."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    if not paths:
        raise ConfigError("no config file given")
    merged = OmegaConf.create()
    for p in paths:
        check_yaml(p)
        merged = OmegaConf.merge(merged, OmegaConf.load(p))
    if overrides:
        for item in overrides:
            if "=" not in item or not item.split("=", 1)[0].strip():
                raise ConfigError(f"override {item!r} is not of the form key.path=value")
        for item in overrides:  # one at a time, so that an error names the override
            try:
                merged = OmegaConf.merge(merged, OmegaConf.from_dotlist([item]))
            except Exception as e:
                raise ConfigError(f"override {item!r}: {_one_line(e)}") from None
    return validate(resolve(merged, config_source(paths)), config_source(paths, overrides))


def _one_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def resolve(cfg: Any, source: str = "config") -> dict[str, Any]:
    """Plain dicts with every ``${...}`` interpolation resolved (pvdm and the Snakefile both validate
    the resolved values); a broken interpolation is a ConfigError naming it."""
    try:
        return OmegaConf.to_container(OmegaConf.create(cfg) if isinstance(cfg, dict) else cfg, resolve=True)
    except Exception as e:
        raise ConfigError(f"{source}: cannot resolve an interpolation: {_one_line(e)}") from None


def experiment(cfg: dict[str, Any], name: str | None) -> tuple[str, dict[str, Any]]:
    """Pick one experiment; ``name`` may be omitted when the config holds exactly one."""
    exps = cfg["experiments"]
    if name is None:
        if len(exps) != 1:
            raise ConfigError(f"the config holds experiments {sorted(exps)}; choose one with --exp")
        name = next(iter(exps))
    if name not in exps:
        raise ConfigError(f"experiment {name!r} is not in the config (have: {', '.join(sorted(exps))})")
    return name, exps[name]


def experiment_from_json(text: str) -> dict[str, Any]:
    """An experiment's settings passed inline (how Snakemake rules call the CLI), validated."""
    try:
        exp = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"--settings is not valid JSON: {e}") from e
    return validate(exp, "--settings", definition="experiment")
