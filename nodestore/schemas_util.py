"""Load the JSON Schemas of schemas/ and validate documents against them."""

from __future__ import annotations

import functools
import json
from pathlib import Path

from nodestore.errors import SchemaError

SCHEMA_DIR = Path(__file__).resolve().parent / "schemas"


@functools.lru_cache(maxsize=None)
def load_schema(name: str) -> dict:
    path = SCHEMA_DIR / f"{name}.schema.json"
    if not path.exists():
        raise SchemaError(f"no schema named {name!r} in {SCHEMA_DIR}")
    return json.loads(path.read_text())


def validate(document, name: str, where: str = "") -> None:
    """Raise SchemaError with the first problem found, naming the document."""
    import jsonschema

    schema = load_schema(name)
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(document), key=lambda e: list(e.path))
    if errors:
        err = errors[0]
        loc = "/".join(str(p) for p in err.path) or "(top level)"
        raise SchemaError(f"{where or name}: {loc}: {err.message}")
    if name == "params" and isinstance(document, dict):
        # the model sections have their own schema, kept beside the backends' docs
        models = {k: document[k] for k in ("forcefield", "labeller", "generator", "executor") if k in document}
        validate(models, "models.params", where=where)


def load_document(path, name: str):
    """Parse the JSON or YAML file ``path`` (by its suffix) and validate it against schema ``name``.

    A file that does not parse, or does not validate, is one SchemaError naming the file.
    """
    path = Path(path)
    text = path.read_text()
    if path.suffix in (".yaml", ".yml"):
        import yaml

        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise SchemaError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    else:
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SchemaError(f"{path} is not valid JSON: {exc}") from None
    validate(doc, name, where=str(path))
    return doc
