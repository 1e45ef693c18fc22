"""The cluster model: devices, links and how bytes get from one device to another.

Units are SI throughout: FLOP/s, bytes, bytes/s, seconds, watts, dollars/hour.
`.cluster` files (compiler/placement/cluster_lang.py) and presets (compiler/placement/presets.py)
both produce a `Cluster`; the cost model and placement only ever see this.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gimlet.errors import UserError

KINDS = ("nvidia", "amd", "cpu", "accelerator")
LINK_KINDS = ("nvlink", "pcie", "network", "xgmi", "cxl")
ALL_OPS = "*"


@dataclass(frozen=True)
class Device:
    name: str
    kind: str  # one of KINDS
    peak_flops: dict[str, float]  # element type ("f32", "bf16", ...) -> FLOP/s
    mem_bandwidth: float  # bytes/s
    mem_capacity: float  # bytes
    launch_overhead: float = 5e-6  # seconds per op (kernel launch / dispatch)
    dtypes: frozenset[str] = frozenset({"f32", "f16", "bf16", "i64", "i32", "i1"})
    ops: frozenset[str] = frozenset({ALL_OPS})  # gml op names, or {"*"}
    power_w: float | None = None
    price_per_hour: float | None = None
    host: str | None = None  # the CPU it hangs off; host bounces go through it
    model: str = ""  # preset or part name, for --explain
    # the backend option chosen for this device, e.g. "tensorrt": `backend =` in a .cluster
    # file, or `--backend KIND=OPTION` (which wins); "" for its kind's default. A narrower
    # backend narrows ops/dtypes to what it runs (placement/backend_ops.py: restrict).
    backend: str = ""
    backend_from: str = ""  # where it was chosen, for messages: "--backend nvidia=tensorrt"

    def supports_op(self, op_name: str) -> bool:
        return ALL_OPS in self.ops or op_name in self.ops

    def flops_for(self, dtype: str) -> float:
        """Peak FLOP/s for a dtype; an unlisted dtype falls back to the slowest listed peak."""
        if dtype in self.peak_flops:
            return self.peak_flops[dtype]
        return min(self.peak_flops.values())

    @property
    def vendor(self) -> str:
        return self.kind


@dataclass(frozen=True)
class Link:
    a: str
    b: str
    bandwidth: float  # bytes/s, each direction
    latency: float  # seconds
    kind: str = "pcie"

    def connects(self, x: str, y: str) -> bool:
        return {self.a, self.b} == {x, y}


# Used where a device names a host but no link to it is declared: PCIe Gen5 x16
# as measured on the lent H100 machine (shared/device-profiles/h100-measured.json:
# 55 GB/s pinned host<->device, 12 us for a 4 KiB copy).
DEFAULT_HOST_LINK = (55e9, 12e-6)


@dataclass(frozen=True)
class Route:
    """How a tensor travels: one direct link, or two hops through a host."""

    hops: tuple[Link, ...]
    transport: str  # nvlink | pcie | network | host_bounce | ...

    def time(self, nbytes: float) -> float:
        return sum(h.latency + nbytes / h.bandwidth for h in self.hops)


@dataclass
class Cluster:
    devices: dict[str, Device]
    links: list[Link] = field(default_factory=list)
    name: str = ""

    def __post_init__(self) -> None:
        for d in self.devices.values():
            if d.host is not None and d.host not in self.devices:
                raise UserError(f"device {d.name}: host '{d.host}' is not a device of the cluster")
            if d.host is not None and self.direct_link(d.name, d.host) is None:
                bw, lat = DEFAULT_HOST_LINK
                self.links.append(Link(d.name, d.host, bw, lat, "pcie"))

    def device(self, name: str) -> Device:
        if name not in self.devices:
            raise UserError(f"unknown device '{name}'; devices: {', '.join(self.devices)}")
        return self.devices[name]

    def direct_link(self, x: str, y: str) -> Link | None:
        return next((link for link in self.links if link.connects(x, y)), None)

    def hosts(self) -> list[str]:
        return [d.name for d in self.devices.values() if d.kind == "cpu"]

    def default_host(self) -> str:
        """Where inputs arrive and outputs are returned: the first CPU, else the first device."""
        return (self.hosts() or list(self.devices))[0]

    def route(self, src: str, dst: str) -> Route:
        """A declared link wins; otherwise bounce through a host both sides reach."""
        if src == dst:
            return Route((), "local")
        link = self.direct_link(src, dst)
        if link is not None:
            return Route((link,), link.kind)
        for host in self.hosts():
            first, second = self.direct_link(src, host), self.direct_link(host, dst)
            if first is not None and second is not None:
                return Route((first, second), "host_bounce")
        raise UserError(
            f"no route from {src} to {dst}: declare a link between them or give both a host"
        )

    def transfer_time(self, src: str, dst: str, nbytes: float) -> float:
        return 0.0 if src == dst else self.route(src, dst).time(nbytes)
