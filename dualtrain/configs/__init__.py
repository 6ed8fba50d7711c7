"""The Hydra config tree; a package so that Hydra finds it inside an installed dualtrain."""
