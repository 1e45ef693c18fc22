"""Which cluster a program is for: `--target` specs and the module's `gml.target`.

The passes (place, insert-comm, overlap-comm), the transfer check, the bundle writer and
the launcher (which refuses a bundle built for another cluster) all resolve targets here,
so none of them has to import a pass to learn the cluster.
"""

from __future__ import annotations

from xdsl.dialects.builtin import ModuleOp, StringAttr

from gimlet.errors import UserError
from gimlet.placement.cluster import Cluster
from gimlet.placement.cluster_lang import resolve_target

DEVICE_ATTR = "gml.device"  # on each placed op: the device it runs on
TARGET_ATTR = "gml.target"  # on the module: the --target it was placed for


def resolve(target: str) -> Cluster:
    """A .cluster file or a preset spec such as `h100+cpu`."""
    return resolve_target(target)


def module_target(module: ModuleOp) -> str | None:
    target = module.attributes.get(TARGET_ATTR)
    return target.data if isinstance(target, StringAttr) else None


def module_cluster(module: ModuleOp) -> Cluster:
    """The cluster a placed module was placed for."""
    target = module_target(module)
    if target is None:
        raise UserError(f"the module has no {TARGET_ATTR} attribute; run 'place' first")
    return resolve(target)
