"""The Hydra config tree; a package so that Hydra finds it inside an installed dualtrain.

Importing it stores `dualtrain_defaults` in Hydra's ConfigStore: every key's default, taken from
the settings dataclasses (`dualtrain.settings.config_defaults`), the first config train.yaml
composes. The YAML files here hold only what an option or a recipe changes.
"""

from hydra.core.config_store import ConfigStore

from dualtrain.settings import config_defaults

ConfigStore.instance().store(
    name="dualtrain_defaults", node=config_defaults(), provider="dualtrain"
)
