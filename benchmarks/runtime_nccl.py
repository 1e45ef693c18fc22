"""The runtime's NCCL path on a machine with two GPUs (run through the `device` tool).

`--prepare DIR` (CPU is enough, but nvcc must be there: GPU segments are compiled for
the NVIDIA backend, sm_90): compiles a GPT stack (d256, 4 layers, T=128) for cpu0 +
gpu0 + gpu1 (NVLink between the GPUs) with layers 0-1 on gpu0 and 2-3 plus the head
on gpu1, and saves the inputs and torch's outputs beside the bundle. The gpu0 -> gpu1
activations are marked "nccl" in the manifest; both GPU segments run as CUDA code, so
the activations stay in device memory from gpu0's kernels through NCCL into gpu1's.

`--run DIR` (on the GPU machine) first measures point-to-point transfers between two
GPU processes, 4 B to 256 MiB: raw NCCL `send`/`recv`, gimlet's channels on NCCL moving
device tensors (what a CUDA segment sends and receives: no host staging), the same
channels with host numpy arrays in and out (what the interpreter gives and takes), and
gimlet's channels on gloo; it prints the 64 MiB ratio of gimlet's device channel to raw
NCCL (issue 11's goal: >= 80%). Then it builds the NVIDIA runtime library once, runs the
bundle with NCCL and again with GIMLET_TRANSPORT=gloo, checks both against torch, and
checks that a GPU worker dying or hanging mid-pipeline fails the run cleanly. After each
section it writes benchmarks/results/runtime_nccl.{md,json} (and copies them to $OUT if
set), so a later section that fails or hangs leaves the earlier figures. Meant to take
under three minutes on 2x H200, prepare included.
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
from p2p import channel_step, raw_step, round_trip  # this script's folder is on sys.path

ROOT = Path(__file__).resolve().parents[1]
SIZES = [4, 64 << 10, 4 << 20, 64 << 20, 256 << 20]
GOAL_SIZE, GOAL = 64 << 20, 0.8  # issue 11: >= 80% of raw NCCL's bandwidth at 64 MiB
ITERATIONS = 10
FAULT_AT = 3  # see faults()
GPUS = ROOT / "examples" / "cpu_two_gpus.cluster"
PINS = "wte=gpu0,wpe=gpu0,h.0-1=gpu0,h.2-3=gpu1,ln_f=gpu1,lm_head=gpu1"
# columns of the point-to-point table: result key, header
P2P = {
    "raw_nccl": "raw NCCL",
    "gimlet_nccl_device": "gimlet NCCL, device tensors",
    "gimlet_nccl": "gimlet NCCL, host arrays",
    "gimlet_gloo": "gimlet gloo",
}


def model() -> Any:
    """The benchmark model, as a `gimletc compile` factory: GPT d256, 4 layers, T=128."""
    import torch

    sys.path.insert(0, str(ROOT / "examples"))
    from gpt import GPT

    torch.manual_seed(0)
    return GPT(vocab=512, ctx=128, d=256, heads=4, layers=4), (torch.randint(0, 512, (1, 128)),)


def prepare(out: Path) -> None:
    import torch

    from gimlet.cli import main as gimletc

    out.mkdir(parents=True, exist_ok=True)
    argv = ["compile", f"{Path(__file__).resolve()}:model", "-o", str(out / "bundle")]
    assert gimletc([*argv, "--target", str(GPUS), "--pin", PINS]) == 0
    manifest = json.loads((out / "bundle" / "manifest.json").read_text())
    kinds = [s["artefact"]["kind"] for s in manifest["segments"]]
    print(f"[nccl] segments: {kinds}", flush=True)
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
    # f32 throughout (FP32 GEMMs, TF32 off): CUDA and torch's CPU kernels differ only in
    # summation order
    np.testing.assert_allclose(result.outputs[0], io["want"], rtol=1e-4, atol=1e-4)
    spans = [e for s in result.stats for e in s["events"] if e["cat"] == "transfer"]
    host = result.stats[0]["iterations_s"]
    received = [e for e in spans if e["args"]["via"] == "nccl" and "<-" in e["name"]]
    return {
        "max_abs_error": err,
        "median_request_ms": median(host[1:]) * 1e3,
        "transfers_via": sorted({e["args"]["via"] for e in spans}),
        "nccl_bytes": sum(e["args"]["bytes"] for e in received),
        # whether gpu1's NCCL receives stayed in device memory (a CUDA segment consumes them)
        "nccl_on_device": sorted({bool(e["args"].get("on_device")) for e in received}),
    }


def faults(d: Path) -> list[dict[str, Any]]:
    """A GPU worker that dies, and one that hangs, in the middle of the NCCL pipeline: how
    long until the run fails, what it says, and whether every worker process is gone.
    gpu0's steps in a request: irecv, CUDA part 0, wait, CUDA part 1 (layers 0-1), isend
    to gpu1, wait; FAULT_AT = 3 fires before the layers run (first request)."""
    from gimlet.runtime.launch import RunError, launch

    io = np.load(d / "io.npz")
    rows: list[dict[str, Any]] = []
    for spec in (f"gpu0:exit@{FAULT_AT}", f"gpu0:sleep=300@{FAULT_AT}"):
        start = time.time()
        try:
            launch(str(d / "bundle"), [io["ids"]], timeout_s=10, env={"GIMLET_FAULT": spec})
            rows.append({"fault": spec, "error": "no failure"})
            continue
        except RunError as e:
            pids, message = e.pids, str(e)
        except Exception as e:  # anything else is a finding too; the next case still runs
            rows.append({"fault": spec, "error": f"unexpected {type(e).__name__}: {e}"})
            continue
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

    from gimlet.dtypes import torch_to_numpy
    from gimlet.runtime.channels import Channels, ChannelSpec

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
    res: dict[str, dict[int, float]] = {k: {} for k in P2P}
    for size in SIZES:
        n = max(size // 4, 1)
        reps = 50 if size <= 4 << 20 else 10
        # distinct values, exact in f32, so a round trip that moved the wrong bytes shows
        x = torch.arange(n, dtype=torch.float32, device=dev).remainder_(65521)
        res["raw_nccl"][size] = round_trip(raw_step(rank, x.clone()), reps, ctrl, cuda=True)
        # (column, the channels' CUDA device, a receiver on a GPU executor, the value sent)
        variants = [
            ("gimlet_nccl_device", dev, True, x),
            ("gimlet_nccl", dev, False, torch_to_numpy(x.cpu())),
            ("gimlet_gloo", None, False, torch_to_numpy(x.cpu())),
        ]
        for name, cuda, device_values, value in variants:
            specs = {
                c: ChannelSpec(c, c, 1 - c, "float32", [n], cuda, device_values=device_values)
                for c in (0, 1)
            }
            ch = Channels(specs, 120.0, ["gpu0", "gpu1"])
            got: list[Any] = []
            res[name][size] = round_trip(channel_step(ch, rank, value, got), reps, ctrl, cuda=True)
            if rank == 0:  # what came back: where it is, and that it is what was sent
                y = got[0]
                on_device = isinstance(y, torch.Tensor) and y.device == dev
                if on_device != device_values:
                    where = getattr(y, "device", "the host")
                    raise AssertionError(f"{name}: got a {type(y).__name__} on {where}")
                back = y.cpu() if on_device else torch.from_numpy(np.asarray(y))
                if not torch.equal(back, x.cpu()):
                    raise AssertionError(f"{name}: {_size(size)} came back changed")
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
    try:
        codes = [p.wait(timeout=150) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    if any(codes):
        raise RuntimeError(f"point-to-point worker failed (exit codes {codes})")
    return {k: {str(s): v for s, v in m.items()} for k, m in json.loads(out.read_text()).items()}


def goal(p2p: dict[str, dict[str, float]]) -> dict[str, float]:
    """Issue 11's figure: gimlet's device channel's bandwidth over raw NCCL's, 64 MiB."""
    raw, ours = p2p["raw_nccl"][str(GOAL_SIZE)], p2p["gimlet_nccl_device"][str(GOAL_SIZE)]
    return {
        "bytes": GOAL_SIZE,
        "raw_one_way_us": raw / 2 * 1e6,
        "gimlet_device_one_way_us": ours / 2 * 1e6,
        "ratio": raw / ours,  # same bytes: bandwidth ratio = inverse time ratio
    }


def _size(n: int) -> str:
    return f"{n >> 20} MiB" if n >= 1 << 20 else f"{n >> 10} KiB" if n >= 1 << 10 else f"{n} B"


def report(data: dict[str, Any]) -> str:
    lines = [
        "# Runtime on two GPUs: NCCL transport",
        "",
        f"Machine: {data['device']}. All figures from one run of "
        "`benchmarks/runtime_nccl.py --run` (raw numbers in runtime_nccl.json).",
    ]
    p2p = data.get("p2p_round_trip_s")
    if p2p:
        g = data["goal"]
        met = "met" if g["ratio"] >= GOAL else "NOT met"
        lines += [
            "",
            f"**Goal (issue 11): a gimlet NCCL channel moves {_size(GOAL_SIZE)} at >= "
            f"{GOAL:.0%} of raw NCCL's bandwidth: {g['ratio']:.0%} ({met}).** One way: "
            f"gimlet {g['gimlet_device_one_way_us']:.0f} us, raw NCCL {g['raw_one_way_us']:.0f} us.",
            "",
            "Point to point, gpu0 <-> gpu1, one process per GPU; one-way = half the median "
            "round trip (from a barrier to a device synchronisation). *Device tensors*: "
            "gimlet's channels take a CUDA tensor and return the CUDA tensor the payload "
            "landed in, as between two CUDA segments (no host staging). *Host arrays*: numpy "
            "in and out, as for the interpreter (host<->device copies on both sides). Raw "
            "NCCL: `dist.send`/`dist.recv` of one device buffer.",
            "",
            "| message | "
            + " | ".join(f"{h} us" for h in P2P.values())
            + " | "
            + " | ".join(f"{h} GB/s" for h in P2P.values())
            + " |",
            "| ---: |" + " ---: |" * (2 * len(P2P)),
        ]
        for size in SIZES:
            t = [p2p[k][str(size)] / 2 for k in P2P]
            lines.append(
                f"| {_size(size)} | "
                + " | ".join(f"{x * 1e6:.0f}" for x in t)
                + " | "
                + " | ".join(f"{size / x / 1e9:.1f}" for x in t)
                + " |"
            )
    elif "p2p_error" in data:
        lines += ["", f"Point to point failed: {data['p2p_error']}"]
    bundle = data.get("bundle", {})
    if bundle:
        lines += [
            "",
            f"GPT d256 L4 T=128 bundle for cpu0 + gpu0 + gpu1, both GPU segments CUDA code "
            f"(layers 0-1 on gpu0, 2-3 and the head on gpu1), {ITERATIONS} requests in the "
            "same workers; median over all but the first. The gpu0 -> gpu1 activations are "
            "the NCCL channel (with `GIMLET_TRANSPORT=gloo`: shared memory through the host).",
            "",
            "| transport | transfers via | NCCL bytes/request | NCCL receive on device "
            "| median request ms | max abs error |",
            "| --- | --- | ---: | --- | ---: | ---: |",
        ]
        for name, r in bundle.items():
            if "error" in r:
                lines.append(f"| {name} | failed: {r['error']} | | | | |")
                continue
            lines.append(
                f"| {name} | {', '.join(r['transfers_via'])} | {r['nccl_bytes'] // ITERATIONS} | "
                f"{', '.join(map(str, r['nccl_on_device'])) or '-'} | "
                f"{r['median_request_ms']:.2f} | {r['max_abs_error']:.1e} |"
            )
    rows = data.get("faults", [])
    if rows:
        lines += [
            "",
            f"Faults (receive timeout 10 s; the fault fires before gpu0's step {FAULT_AT}, its "
            "CUDA part with layers 0-1, in the first request):",
            "",
            "| fault | seconds to error | all workers gone | message |",
            "| --- | ---: | --- | --- |",
        ]
        for r in rows:
            lines.append(
                f"| `{r['fault']}` | {r.get('seconds_to_error', '-')} | "
                f"{r.get('all_workers_gone', '-')} | {r.get('message', r.get('error'))} |"
            )
    return "\n".join(lines) + "\n"


def save(data: dict[str, Any]) -> None:
    """Write what there is so far (a later section that hangs still leaves these)."""
    results = ROOT / "benchmarks" / "results"
    results.mkdir(exist_ok=True)
    (results / "runtime_nccl.md").write_text(report(data))
    (results / "runtime_nccl.json").write_text(json.dumps(data, indent=2) + "\n")
    if os.environ.get("OUT"):
        for f in ("runtime_nccl.md", "runtime_nccl.json"):
            shutil.copy(results / f, os.environ["OUT"])


def run(d: Path) -> None:
    import torch

    from gimlet.backends.nvidia.build import build_runtime

    device = f"{torch.cuda.device_count()}x {torch.cuda.get_device_name(0)}"
    print(f"[nccl] {device}", flush=True)
    data: dict[str, Any] = {"device": device}
    print("[nccl] point to point", flush=True)
    start = time.time()
    try:
        data["p2p_round_trip_s"] = point_to_point(d)
        data["goal"] = goal(data["p2p_round_trip_s"])
        g = data["goal"]
        print(
            f"[nccl] {_size(GOAL_SIZE)} one way: gimlet device channel "
            f"{g['gimlet_device_one_way_us']:.0f} us, raw NCCL {g['raw_one_way_us']:.0f} us: "
            f"gimlet/raw bandwidth {g['ratio']:.0%} (goal >= {GOAL:.0%})",
            flush=True,
        )
    except Exception as e:  # the other sections still run
        data["p2p_error"] = f"{type(e).__name__}: {e}"
        print(f"[nccl] point to point failed: {data['p2p_error']}", flush=True)
    print(f"[nccl] point to point took {time.time() - start:.0f} s", flush=True)
    save(data)
    # the workers would each build the NVIDIA runtime library on their first request
    start = time.time()
    try:
        build_runtime()
        print(f"[nccl] runtime library ready in {time.time() - start:.0f} s", flush=True)
    except Exception as e:  # the workers will say the same in the bundle rows
        print(f"[nccl] runtime library: {type(e).__name__}: {e}", flush=True)
    data["bundle"] = {}
    for transport in ("nccl", "gloo"):
        print(f"[nccl] bundle via {transport}", flush=True)
        start = time.time()
        try:
            data["bundle"][transport] = run_bundle(d, transport)
        except Exception as e:
            data["bundle"][transport] = {"error": f"{type(e).__name__}: {e}"}
        print(f"[nccl] {data['bundle'][transport]} ({time.time() - start:.0f} s)", flush=True)
        save(data)
    print("[nccl] faults", flush=True)
    data["faults"] = faults(d)
    save(data)
    print(report(data))


if __name__ == "__main__":
    if sys.argv[1] == "--p2p-rank":
        _p2p_rank(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
    elif sys.argv[1] == "--prepare":
        prepare(Path(sys.argv[2]))
    elif sys.argv[1] == "--run":
        run(Path(sys.argv[2]))
    else:
        sys.exit("usage: runtime_nccl.py --prepare DIR | --run DIR")
