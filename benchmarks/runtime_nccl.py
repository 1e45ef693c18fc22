"""The runtime's NCCL path on a machine with two GPUs (run through the `device` tool).

`--prepare DIR` (here, with torch 2.13): compiles the GPT stack of
`runtime_overhead.py` for cpu0 + gpu0 + gpu1 (NVLink between the GPUs) with layers 0-1
on gpu0 and 2-3 plus the head on gpu1, and saves the inputs and torch's outputs beside
the bundle. GPU segments run on the reference interpreter (gimlet has no GPU backend
yet); what this exercises is the transport: the gpu0 -> gpu1 activations are marked
"nccl" in the manifest.

`--run DIR` (on the GPU machine): runs that bundle with NCCL and again with
GIMLET_TRANSPORT=gloo, checks both against torch, and measures point-to-point
transfers between two GPU processes: raw NCCL `send`/`recv`, gimlet's channels on
NCCL, and gimlet's channels on gloo (host copies), 4 B to 256 MiB. Writes
benchmarks/results/runtime_nccl.{md,json} (and copies them to $OUT if set).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from statistics import median
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SIZES = [4, 64 << 10, 4 << 20, 64 << 20, 256 << 20]
ITERATIONS = 10
GPUS = ROOT / "examples" / "cpu_two_gpus.cluster"
PINS = "wte=gpu0,wpe=gpu0,h.0-1=gpu0,h.2-3=gpu1,ln_f=gpu1,lm_head=gpu1"


def prepare(out: Path) -> None:
    import torch

    from gimlet.cli import main as gimletc

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from runtime_overhead import model

    out.mkdir(parents=True, exist_ok=True)
    me = f"{ROOT / 'benchmarks' / 'runtime_overhead.py'}:model"
    argv = ["compile", me, "-o", str(out / "bundle"), "--target", str(GPUS)]
    assert gimletc([*argv, "--pin", PINS]) == 0
    net, (ids,) = model()
    with torch.no_grad():
        want = net.eval()(ids).numpy()
    np.savez(out / "io.npz", ids=ids.numpy(), want=want)


def run_bundle(d: Path, transport: str) -> dict[str, Any]:
    from gimlet.runtime.launch import launch

    io = np.load(d / "io.npz")
    env = {"GIMLET_TRANSPORT": transport}
    result = launch(str(d / "bundle"), [io["ids"]], iterations=ITERATIONS, env=env)
    err = float(np.max(np.abs(result.outputs[0] - io["want"])))
    np.testing.assert_allclose(result.outputs[0], io["want"], rtol=1e-4, atol=1e-4)
    spans = [e for s in result.stats for e in s["events"] if e["cat"] == "transfer"]
    host = result.stats[0]["iterations_s"]
    return {
        "max_abs_error": err,
        "median_request_ms": median(host[1:]) * 1e3,
        "transfers_via": sorted({e["args"]["via"] for e in spans}),
        "nccl_bytes": sum(e["args"]["bytes"] for e in spans if e["args"]["via"] == "nccl"),
    }


def faults(d: Path) -> list[dict[str, Any]]:
    """A GPU worker that dies, and one that hangs, in the middle of the NCCL pipeline: how
    long until the run fails, what it says, and whether every worker process is gone."""
    from gimlet.runtime.launch import RunError, launch

    io = np.load(d / "io.npz")
    rows = []
    for spec in ("gpu0:exit@60", "gpu0:sleep=300@60"):
        start = time.time()
        try:
            launch(str(d / "bundle"), [io["ids"]], timeout_s=10, env={"GIMLET_FAULT": spec})
            rows.append({"fault": spec, "error": "no failure"})
            continue
        except RunError as e:
            pids, message = e.pids, str(e)
        gone = True
        for pid in pids:
            try:
                os.kill(pid, 0)
                gone = False
            except ProcessLookupError:
                pass
        rows.append(
            {
                "fault": spec,
                "seconds_to_error": round(time.time() - start, 1),
                "message": " / ".join(line.strip() for line in message.splitlines()),
                "all_workers_gone": gone,
            }
        )
        print(f"[nccl] {rows[-1]}", flush=True)
    return rows


def _p2p_rank(rank: int, port: int, out: str) -> None:
    import datetime

    import torch
    import torch.distributed as dist

    from gimlet.runtime.channels import Channels, ChannelSpec

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from runtime_overhead import channel_round_trip, raw_round_trip

    torch.cuda.set_device(rank)
    dist.init_process_group(
        "cpu:gloo,cuda:nccl",
        rank=rank,
        world_size=2,
        init_method=f"tcp://127.0.0.1:{port}",
        timeout=datetime.timedelta(seconds=120),
    )
    ctrl = dist.new_group(backend="gloo")
    dev = torch.device("cuda", rank)
    res: dict[str, dict[int, float]] = {"raw_nccl": {}, "gimlet_nccl": {}, "gimlet_gloo": {}}
    for size in SIZES:
        n = max(size // 4, 1)
        reps = 50 if size <= 4 << 20 else 10
        buf = torch.zeros(n, device=dev)
        res["raw_nccl"][size] = raw_round_trip(rank, buf, reps, ctrl)
        for name, cuda in (("gimlet_nccl", dev), ("gimlet_gloo", None)):
            specs = {
                0: ChannelSpec(0, 0, 1, "float32", [n], cuda),
                1: ChannelSpec(1, 1, 0, "float32", [n], cuda),
            }
            ch = Channels(specs, 120.0, ["gpu0", "gpu1"])
            x = np.zeros(n, np.float32)
            res[name][size] = channel_round_trip(ch, rank, x, reps, ctrl)
    if rank == 0:
        Path(out).write_text(json.dumps(res))
    dist.destroy_process_group()


def point_to_point(d: Path) -> dict[str, dict[str, float]]:
    from gimlet.runtime.launch import _free_port

    port, out = _free_port(), d / "p2p.json"
    procs = [
        subprocess.Popen([sys.executable, __file__, "--p2p-rank", str(r), str(port), str(out)])
        for r in range(2)
    ]
    if any(p.wait(timeout=500) != 0 for p in procs):
        raise RuntimeError("point-to-point worker failed")
    return {k: {str(s): v for s, v in m.items()} for k, m in json.loads(out.read_text()).items()}


def _size(n: int) -> str:
    return f"{n >> 20} MiB" if n >= 1 << 20 else f"{n >> 10} KiB" if n >= 1 << 10 else f"{n} B"


def report(bundle: dict[str, Any], p2p: dict[str, dict[str, float]], device: str) -> str:
    lines = [
        "# Runtime on two GPUs: NCCL transport",
        "",
        f"Machine: {device}. GPT d256 L4 T=128 bundle for cpu0 + gpu0 + gpu1 (gpu segments on "
        f"the reference interpreter), {ITERATIONS} requests in the same workers.",
        "",
        "| transport | transfers via | NCCL bytes/request | median request ms | max abs error |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for name, r in bundle.items():
        lines.append(
            f"| {name} | {', '.join(r['transfers_via'])} | {r['nccl_bytes'] // ITERATIONS} | "
            f"{r['median_request_ms']:.1f} | {r['max_abs_error']:.1e} |"
        )
    lines += [
        "",
        "Point to point, gpu0 <-> gpu1, one process per GPU; one-way = half the median round "
        "trip. gimlet's channels take and return host numpy arrays (the interpreter's "
        "values), so their NCCL times include the host<->device copies; raw NCCL moves "
        "device buffers only.",
        "",
        "| message | raw NCCL us | gimlet NCCL us | gimlet gloo us | raw NCCL GB/s | "
        "gimlet NCCL GB/s | gimlet gloo GB/s |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for s in SIZES:
        t = {k: p2p[k][str(s)] / 2 for k in ("raw_nccl", "gimlet_nccl", "gimlet_gloo")}
        lines.append(
            f"| {_size(s)} | {t['raw_nccl'] * 1e6:.0f} | {t['gimlet_nccl'] * 1e6:.0f} | "
            f"{t['gimlet_gloo'] * 1e6:.0f} | {s / t['raw_nccl'] / 1e9:.1f} | "
            f"{s / t['gimlet_nccl'] / 1e9:.1f} | {s / t['gimlet_gloo'] / 1e9:.1f} |"
        )
    return "\n".join(lines) + "\n"


def run(d: Path) -> None:
    import torch

    device = f"{torch.cuda.device_count()}x {torch.cuda.get_device_name(0)}"
    print(f"[nccl] {device}", flush=True)
    bundle = {}
    for transport in ("nccl", "gloo"):
        print(f"[nccl] bundle via {transport}", flush=True)
        bundle[transport] = run_bundle(d, transport)
    print("[nccl] point to point", flush=True)
    p2p = point_to_point(d)
    print("[nccl] faults", flush=True)
    fault_rows = faults(d)
    text = report(bundle, p2p, device)
    text += "\nFaults (receive timeout 10 s; the fault fires before gpu0's 60th op):\n\n"
    text += (
        "| fault | seconds to error | all workers gone | message |\n| --- | ---: | --- | --- |\n"
    )
    for r in fault_rows:
        text += (
            f"| `{r['fault']}` | {r.get('seconds_to_error', '-')} | "
            f"{r.get('all_workers_gone', '-')} | {r.get('message', r.get('error'))} |\n"
        )
    print(text)
    results = ROOT / "benchmarks" / "results"
    results.mkdir(exist_ok=True)
    (results / "runtime_nccl.md").write_text(text)
    data = {"device": device, "bundle": bundle, "p2p_round_trip_s": p2p, "faults": fault_rows}
    (results / "runtime_nccl.json").write_text(json.dumps(data, indent=2) + "\n")
    if os.environ.get("OUT"):
        for f in ("runtime_nccl.md", "runtime_nccl.json"):
            shutil.copy(results / f, os.environ["OUT"])


if __name__ == "__main__":
    if sys.argv[1] == "--p2p-rank":
        _p2p_rank(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
    elif sys.argv[1] == "--prepare":
        prepare(Path(sys.argv[2]))
    else:
        run(Path(sys.argv[2]))
