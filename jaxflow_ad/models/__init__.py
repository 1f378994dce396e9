"""Methods, looked up by ``config.model.name`` in one registry.

Each entry is ``"module:Class"``, a subclass of :class:`jaxflow_ad.models.base.Method`;
modules are imported on first use so that importing the package stays cheap.
"""

from __future__ import annotations

import importlib

import ml_collections

from jaxflow_ad.errors import ConfigError

REGISTRY: dict[str, str] = {
    "pyramidflow": "jaxflow_ad.models.pyramidflow:PyramidFlow",
    "fair": "jaxflow_ad.models.fair:FAIR",
    "nfbmr": "jaxflow_ad.models.nfbmr:NFBMR",
    "masf": "jaxflow_ad.models.masf:MASF",
    "madflow": "jaxflow_ad.models.madflow:MADFlow",
}


def get(name: str):
    if name not in REGISTRY:
        raise ConfigError(f"config key model.name={name!r} is not a known method; use one of {sorted(REGISTRY)}")
    module, cls = REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), cls)


def check_config(config: ml_collections.ConfigDict) -> None:
    for key in ("data", "model", "train", "eval"):
        if key not in config:
            raise ConfigError(f"config has no '{key}' section; every config needs data, model, train and eval")
    get(config.model.name)


def configure(config: ml_collections.ConfigDict, category: str) -> ml_collections.ConfigDict:
    """A copy of ``config`` with the method's per-category settings applied."""
    cls = get(config.model.name)
    cfg = ml_collections.ConfigDict(config.to_dict())
    return cls.configure(cfg, category)


def build(config: ml_collections.ConfigDict):
    return get(config.model.name)(config)
