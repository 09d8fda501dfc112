"""Config schemas (pydantic, strict) and their loading: YAML, ``--set`` overrides, errors that name file and key."""
