"""Load and validate the study configuration (config/config.yaml).

Validation happens before Snakemake builds its DAG, so a bad value stops the
run before any job starts, with a message that names the key and what is
allowed. This module is imported by the Snakefile: keep it free of torch.

The schema file lists no knee method: :func:`load_schema` takes the allowed
names of ``analysis.fit.knee_methods`` and their default from the registry
:data:`loss_slope.analysis.knee.KNEE_METHODS`, whose import brings the analysis
package (numpy, scipy) into the Snakefile's process.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import jsonschema
import yaml

from loss_slope.analysis.knee import KNEE_METHODS

# the JSON schema of the study config, shipped inside the package (package data)
SCHEMA_PATH = Path(__file__).resolve().with_name("config.schema.yaml")


class ConfigError(ValueError):
    """A study configuration value is invalid. The message names the key."""


def _fill_defaults(validator_class):
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for prop, sub in properties.items():
                if "default" in sub and prop not in instance:
                    instance[prop] = copy.deepcopy(sub["default"])
        yield from validate_properties(validator, properties, instance, schema)

    def additional_defaults(validator, additional, instance, schema):
        # defaults inside additionalProperties (e.g. each variant's hydra_overrides)
        if isinstance(instance, dict) and isinstance(additional, dict):
            extras = set(instance) - set(schema.get("properties", {}))
            for name in extras:
                value = instance[name]
                if isinstance(value, dict):
                    for prop, sub in additional.get("properties", {}).items():
                        if "default" in sub and prop not in value:
                            value[prop] = copy.deepcopy(sub["default"])
        yield from validator_class.VALIDATORS["additionalProperties"](validator, additional, instance, schema)

    # an integer is an int: JSON Schema's own rule also takes 2.0, which range() and argparse refuse in the jobs
    strict_integers = validator_class.TYPE_CHECKER.redefine(
        "integer", lambda checker, x: isinstance(x, int) and not isinstance(x, bool)
    )
    return jsonschema.validators.extend(
        validator_class,
        {"properties": set_defaults, "additionalProperties": additional_defaults},
        type_checker=strict_integers,
    )


def _key_path(error: jsonschema.ValidationError) -> str:
    parts = []
    for p in error.absolute_path:
        parts.append(f"[{p}]" if isinstance(p, int) else (("." if parts else "") + str(p)))
    return "".join(parts) or "<top level>"


def _describe(error: jsonschema.ValidationError) -> str:
    key = _key_path(error)
    schema = error.schema if isinstance(error.schema, dict) else {}
    v = error.validator
    if v == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        extra = [k for k in error.instance if k not in allowed] if isinstance(error.instance, dict) else []
        where = key if key != "<top level>" else "the top level"
        return f"unknown key(s) {extra} in {where}; allowed keys: {allowed}"
    if v == "enum":
        return f"{key}: {error.instance!r} is not allowed; allowed values: {error.validator_value}"
    if v == "type":
        return f"{key}: {error.instance!r} has the wrong type; expected {error.validator_value}"
    if v in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"):
        op = {"minimum": ">=", "exclusiveMinimum": ">", "maximum": "<=", "exclusiveMaximum": "<"}[v]
        return f"{key}: {error.instance!r} is out of range; allowed: {op} {error.validator_value}"
    if v == "minItems":
        return f"{key}: needs at least {error.validator_value} item(s), got {error.instance!r}"
    if v == "minProperties":
        return f"{key}: needs at least {error.validator_value} entry, got none"
    if v == "pattern":
        return (
            f"{key}: {error.instance!r} contains characters that are not allowed (must match {error.validator_value})"
        )
    if v == "required":
        return f"{key}: {error.message}"
    desc = schema.get("description", "")
    return f"{key}: {error.message}" + (f" ({desc.strip()})" if desc else "")


def load_schema(path: str | Path | None = None) -> dict:
    """The study config schema: ``path``, or the packaged one (:data:`SCHEMA_PATH`).

    ``analysis.fit.knee_methods`` gets the registry's names as the enum of its items
    and as its default, so the registry is the one list of knee methods.
    """
    with open(path or SCHEMA_PATH) as fh:
        schema = yaml.safe_load(fh)
    knees = schema["properties"]["analysis"]["properties"]["fit"]["properties"]["knee_methods"]
    knees["items"] = {**knees["items"], "enum": list(KNEE_METHODS)}
    knees["default"] = list(KNEE_METHODS)
    return schema


def validate_config(config: dict, schema: dict | str | Path | None = None) -> dict:
    """Validate ``config`` in place, fill defaults, run cross-key checks.

    Returns the same (now complete) dict. Raises :class:`ConfigError` naming
    every offending key.
    """
    if not isinstance(config, dict):
        raise ConfigError(f"the configuration must be a mapping, got {type(config).__name__}")
    if not isinstance(schema, dict):
        schema = load_schema(schema)
    variants = config.get("variants")
    bad_keys = [k for k in variants if not isinstance(k, str)] if isinstance(variants, dict) else []
    if bad_keys:  # YAML reads `2024:` as a number; paths and wildcards need names
        raise ConfigError(f"invalid configuration:\n  - variants: names must be strings; quote {bad_keys}")
    retyped = [k for k in variants if not _hydra_reads_as_itself(k)] if isinstance(variants, dict) else []
    if retyped:  # the trainer gets `variant=<name>`: Hydra would record 1e5 as 100000.0, true as True
        raise ConfigError(
            f"invalid configuration:\n  - variants: {retyped}: Hydra reads these names as numbers, booleans "
            "or null; give each variant a name with a letter that is not one of those (e.g. S-1e5)"
        )
    non_finite = list(_non_finite(config))
    if non_finite:  # NaN passes every range check (all comparisons are false), inf passes lower bounds
        raise ConfigError(
            "invalid configuration:\n  - "
            + "\n  - ".join(f"{where}: {v} is not a finite number" for where, v in non_finite)
        )
    validator = _fill_defaults(jsonschema.Draft202012Validator)(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        lines = [_describe(e) for e in errors]
        raise ConfigError("invalid configuration:\n  - " + "\n  - ".join(dict.fromkeys(lines)))
    _cross_checks(config)
    return config


def _hydra_reads_as_itself(name: str) -> bool:
    """Whether the override ``variant=<name>`` gives the string ``name`` back (not 1e5 -> 100000.0)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        return OverridesParser.create().parse_override(f"variant={name}").value() == name
    except HydraException:
        return True  # not a name Hydra can take at all: the schema's pattern says so


def _non_finite(node, where: str = ""):
    """(key path, value) of every NaN or infinite float in ``node``."""
    if isinstance(node, float) and not math.isfinite(node):
        yield where, node
    elif isinstance(node, dict):
        for k, v in node.items():
            yield from _non_finite(v, f"{where}.{k}" if where else str(k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _non_finite(v, f"{where}[{i}]")


def _cross_checks(config: dict) -> None:
    problems = []
    tr = config["training"]
    if tr["warmup_epochs"] >= tr["epochs"]:
        problems.append(
            f"training.warmup_epochs: {tr['warmup_epochs']} must be smaller than training.epochs ({tr['epochs']})"
        )
    grids = [("grid", config["grid"])] + [
        (f"variants.{name}.grid", spec.get("grid", {})) for name, spec in config["variants"].items()
    ]
    for where, grid in grids:
        for key, values in grid.items():
            dupes = sorted({v for v in values if values.count(v) > 1})
            if dupes:
                problems.append(f"{where}.{key}: duplicate values {dupes} would train the same run twice")
    if problems:
        raise ConfigError("invalid configuration:\n  - " + "\n  - ".join(problems))


def load_config(path: str | Path, schema: dict | str | Path | None = None) -> dict:
    """Read a YAML config file (safe loader) and validate it."""
    with open(path) as fh:
        config = yaml.safe_load(fh) or {}
    return validate_config(config, schema)
