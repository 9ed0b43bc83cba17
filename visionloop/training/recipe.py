"""Training recipes as settings fragments: what ``visionloop tune`` writes, what a run adopts.

A recipe file holds a ``training:`` section with the keys it sets; pasted into the settings
file or named by the nightly's ``training_recipe`` parameter, it replaces those keys of the
settings' own ``training`` section (the others stay as they are).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from visionloop.settings import Settings, SettingsError, TrainingSettings


def recipe_yaml(recipe: dict[str, Any], note: str) -> str:
    """The ``training:`` fragment, headed by ``note`` as a comment."""
    comment = "".join(f"# {line}\n" for line in note.splitlines())
    return comment + yaml.safe_dump({"training": recipe}, sort_keys=False)


def read_recipe(path: Path | str) -> dict[str, Any]:
    """The ``training:`` mapping of a recipe file; a clear error when it is not one."""
    path = Path(path)
    if not path.is_file():
        raise SettingsError(
            f"training recipe {path} does not exist; pass a file `visionloop tune` wrote"
        )
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise SettingsError(f"training recipe {path} is not valid YAML: {error}") from error
    if not isinstance(data, dict) or not isinstance(data.get("training"), dict) or len(data) != 1:
        raise SettingsError(
            f"training recipe {path} must hold one `training:` mapping, as `visionloop tune` "
            "writes it"
        )
    return data["training"]


def adopt_recipe(settings: Settings, path: Path | str | None) -> Settings:
    """``settings`` with the recipe file's training keys in place; unchanged without a file."""
    if path is None:
        return settings
    recipe = read_recipe(path)
    try:
        training = TrainingSettings.model_validate(settings.training.model_dump() | recipe)
    except ValidationError as error:
        raise SettingsError(f"training recipe {path} is invalid:\n{error}") from error
    return settings.model_copy(update={"training": training})
