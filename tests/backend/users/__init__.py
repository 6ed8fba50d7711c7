"""Recipes written as a researcher writes them, with their own data: the tests of any task."""


def recipe_overrides(name: str, *overrides: str) -> list[str]:
    """The overrides that run `tests/backend/users/<name>.py` as a recipe, on the data of its own
    `load_data`, followed by `overrides`."""
    module = f"{__name__}.{name}"
    return [
        f"recipe.name={name}",
        f"recipe.module={module}",
        "~recipe.model",  # the default recipe's (cnn) model options and task are not theirs
        "~recipe.task",
        "data=python",
        f"data.source={module}:load_data",
        *overrides,
    ]
