"""The TensorRT backend in bundles (artefact kind "tensorrt", `--backend nvidia=tensorrt`).

Compile side: the segment is cut at its comm ops as the other backends cut it
(backends/cpu/segments.py); each compiled part is lowered to ONNX (lower.py), checked
(ONNX checker, shape inference, TensorRT's operator matrix) and written as
`trt/seg<N>.part<K>.onnx` with its weights in `.data` beside it. The segment's
`trt/seg<N>.plan.json` (precision flags, optimization profiles), `trt/seg<N>.trtexec.sh`
and a copy of build_engine.py make the engines buildable by hand. The CUDA backend's
parts are compiled too when nvcc is present, so the bundle also runs where TensorRT is
not installed. Needs the weights (the bundle writer passes them as options["weights"]).

Run side: with the `tensorrt` package and a GPU, each part's engine is built once (cached
under `$GIMLET_CACHE_DIR/tensorrt` by the hash of the model, its weights, the plan entry,
TensorRT's version and the GPU) and run with torch's CUDA tensors. Without them the worker
runs the CUDA parts (a GPU is present) or the interpreter, and the run report
(backends/report.py, `runs_here`) says so once per load.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gimlet.artifacts import IR_FILE
from gimlet.backends.base import Executor, FieldReader, HostExecutor
from gimlet.backends.parts import compiled_parts, part_functions
from gimlet.dialects import gml
from gimlet.errors import UnsupportedOpError, UserError

KIND = "tensorrt"
SCRIPT = "trt/build_engine.py"
NO_GPU = "no CUDA GPU here"


def lower_segment(
    segment: gml.SegmentOp, index: int, weights: Mapping[str, np.ndarray], cut: Any = None
) -> list[Any]:
    """Each compiled part as a checked OnnxPart; UnsupportedOpError lists every op that
    does not lower or that TensorRT cannot run, with its source line. `cut`: the
    segment's compiled_parts, when the caller already cut it."""
    import onnx

    from .lower import lower, verify
    from .support import refusals

    parts, problems = [], []
    for k, fn in enumerate(part_functions(segment, index, cut)):
        try:
            part = lower(fn, weights, f"seg{index}.part{k}")
        except UnsupportedOpError as e:
            problems += str(e).splitlines()[1:] or [str(e)]
            continue
        try:
            inferred = verify(part)
        except (
            onnx.checker.ValidationError,
            onnx.shape_inference.InferenceError,
            AssertionError,
        ) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            problems.append(
                f"seg{index}.part{k}: the ONNX checks reject gimlet's model ({first}); a gimlet bug"
            )
            continue
        problems += refusals(inferred, part.origin)
        parts.append(part)
    if problems:
        raise UnsupportedOpError("\n".join(["cannot lower to TensorRT:", *problems]))
    return parts


def _profiles(segment: gml.SegmentOp, cut: list[Any]) -> tuple[list[list[Any]], dict[str, Any]]:
    """Per compiled part, its inputs' min/opt/max shapes from the program's Dim bounds
    (profile.py), and those bounds."""
    from xdsl.dialects.builtin import ModuleOp

    from gimlet.ir import main_func

    from .profile import profiles, symbol_ranges

    module = segment.get_toplevel_object()
    if not isinstance(module, ModuleOp):  # a segment outside a module: no bounds
        return [[None] * len(p.inputs) for p in cut], {}
    ranges = symbol_ranges(module)
    fn = main_func(module)
    found = iter(profiles(fn, ranges, [v for p in cut for v in p.inputs]))  # one evaluation
    return [[next(found) for _ in p.inputs] for p in cut], ranges


class TensorRTBackend:
    name = KIND
    option = "tensorrt"
    device_kinds = ("nvidia",)
    label = "the TensorRT backend"

    def compile_segment(
        self,
        segment: gml.SegmentOp,
        index: int,
        bundle_dir: str,
        device: Mapping[str, str],
        options: Mapping[str, Any],
    ) -> dict[str, Any]:
        from .plan import make_plan, trtexec_script

        weights = options.get("weights")
        if weights is None:
            raise UnsupportedOpError(
                "cannot lower to TensorRT:\nthe ONNX models embed the weights, and the bundle "
                "writer passed none (options['weights'])"
            )
        _, cut = compiled_parts(segment)
        parts = lower_segment(segment, index, weights, cut)
        out = Path(bundle_dir, "trt")
        out.mkdir(parents=True, exist_ok=True)
        written = []
        for k, part in enumerate(parts):
            onnx_name, data_name = part.save(out / f"seg{index}.part{k}.onnx")
            written.append((f"trt/{onnx_name}", f"trt/{data_name}", part))
        plan = make_plan(index, written, *_profiles(segment, cut))
        plan_file, sh_file = f"trt/seg{index}.plan.json", f"trt/seg{index}.trtexec.sh"
        Path(bundle_dir, plan_file).write_text(json.dumps(plan, indent=2) + "\n")
        Path(bundle_dir, sh_file).write_text(trtexec_script(plan))
        os.chmod(Path(bundle_dir, sh_file), 0o755)
        shutil.copyfile(Path(__file__).with_name("build_engine.py"), Path(bundle_dir, SCRIPT))
        artefact: dict[str, Any] = {
            "kind": KIND,
            "file": IR_FILE,
            "parts": [
                {"onnx": o, "data": d, "digest": p.digest, "nodes": len(p.model.graph.node)}
                for o, d, p in written
            ],
            "plan": plan_file,
            "script": SCRIPT,
            "trtexec": sh_file,
            "opset": plan["opset"],
        }
        artefact.update(_cuda_companion(segment, index, bundle_dir, device, options))
        return artefact

    def artefact_files(self, artefact: dict[str, Any], read: FieldReader, path: str) -> list[str]:
        parts = read(artefact, "parts", list, path)
        files = [read(artefact, k, str, path) for k in ("plan", "script", "trtexec")]
        for i in range(len(parts)):
            part = read(parts, i, dict, f"{path}.parts")
            where = f"{path}.parts[{i}]"
            files += [read(part, k, str, where) for k in ("onnx", "data")]
            read(part, "digest", str, where)
        cuda = artefact.get("cuda")
        if cuda is not None:
            from gimlet.backends import get

            files += get("cuda").artefact_files(
                read(artefact, "cuda", dict, path), read, f"{path}.cuda"
            )
        return files

    def describe(self, artefact: dict[str, Any]) -> str:
        n = len(artefact["parts"])
        if not n:
            return "no compute to compile (comm ops and size arithmetic only)"
        what = f"TensorRT: {n} ONNX {'model' if n == 1 else 'models'} (opset {artefact['opset']}) under trt/ with a build plan"
        if artefact.get("cuda") is not None:
            return f"{what}; CUDA parts too, for machines without TensorRT"
        return f"{what}; no CUDA parts ({artefact.get('cuda_skipped', 'not built')}): without TensorRT it runs on the interpreter"

    def runs_here(self, artefact: Mapping[str, Any]) -> tuple[str, str]:
        """(the executor kind that runs this artefact here, why it is not TensorRT): the
        decision `load` and FallbackExecutor make, for the run report (backends/report.py)."""
        missing = tensorrt_missing()
        if missing is None:
            return KIND, ""
        if artefact.get("cuda") is None:
            skipped = artefact.get("cuda_skipped", "not built")
            return "interpreter", f"{missing}, and the bundle has no CUDA parts ({skipped})"
        import torch

        if not torch.cuda.is_available():
            return "interpreter", missing if missing == NO_GPU else f"{missing}, and {NO_GPU}"
        return "cuda", f"{missing}: ran its CUDA parts"

    def load(self, host: HostExecutor, weights: Mapping[str, np.ndarray], bundle: Any) -> Executor:
        # says nothing: the run report (backends/report.py) says once per load what runs
        # each segment and why, where this runs in every worker
        if tensorrt_missing() is None:
            return TensorRTExecutor(host, bundle)
        import torch

        if torch.cuda.is_available():
            from gimlet.backends.nvidia.backend import CudaExecutor

            return FallbackExecutor(host, CudaExecutor(host, weights, bundle))
        return FallbackExecutor(host, None)


def tensorrt_missing() -> str | None:
    """Why engines cannot be built and run here, or None."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "TensorRT is not installed here (no `tensorrt` module)"
    import torch

    if not torch.cuda.is_available():
        return NO_GPU
    return None


def _cuda_companion(
    segment: gml.SegmentOp,
    index: int,
    bundle_dir: str,
    device: Mapping[str, str],
    options: Mapping[str, Any],
) -> dict[str, Any]:
    """The CUDA backend's artefact for the same segment, or why there is none."""
    if os.environ.get("GIMLET_TENSORRT_CUDA") == "0":
        return {"cuda": None, "cuda_skipped": "GIMLET_TENSORRT_CUDA=0"}
    from gimlet.backends import get

    try:
        return {"cuda": get("cuda").compile_segment(segment, index, bundle_dir, device, options)}
    except UserError as e:  # no nvcc, or an op the CUDA backend does not lower
        return {"cuda": None, "cuda_skipped": str(e).splitlines()[0]}


class FallbackExecutor:
    """Where TensorRT cannot run: the segment's CUDA parts when there are some and a GPU,
    else the interpreter. It takes host arrays (no `tensor_device`): a segment without CUDA
    parts runs on the host, and the CUDA executor copies what it needs."""

    def __init__(self, host: HostExecutor, cuda: Executor | None):
        self.host = host
        self.cuda = cuda

    def run_segment(
        self, segment: gml.SegmentOp, inputs: Sequence[Any], index: int, artefact: dict[str, Any]
    ) -> list[Any]:
        if self.cuda is not None and artefact.get("cuda") is not None:
            return self.cuda.run_segment(segment, inputs, index, artefact["cuda"])
        return self.host.run_segment(segment, inputs, index, artefact)


class TensorRTExecutor:
    """Runs a segment's parts as TensorRT engines (built on first use, cached by content
    hash); comm ops and size arithmetic go to the worker's interpreter executor."""

    # where this executor takes tensors (runtime/inprocess.py hands values over there)
    tensor_device = "cuda"

    def __init__(self, host: HostExecutor, bundle: Any):
        self.host = host
        self.bundle = bundle
        self.plans: dict[int, tuple[list[Any], list[Engine]]] = {}

    def _plan(
        self, segment: gml.SegmentOp, index: int, artefact: dict[str, Any]
    ) -> tuple[list[Any], list[Engine]]:
        if index not in self.plans:
            items, parts = compiled_parts(segment)
            with open(self.bundle.file(artefact["plan"])) as f:
                plan = json.load(f)
            if len(parts) != len(plan["parts"]):
                raise UserError(
                    f"bundle segment {index}: {len(plan['parts'])} TensorRT parts in the plan, "
                    f"{len(parts)} in the IR; rebuild the bundle with gimletc compile"
                )
            engines = [Engine(entry, Path(self.bundle.path)) for entry in plan["parts"]]
            self.plans[index] = (items, engines)
        return self.plans[index]

    def run_segment(
        self, segment: gml.SegmentOp, inputs: Sequence[Any], index: int, artefact: dict[str, Any]
    ) -> list[Any]:
        from gimlet.backends.nvidia.backend import run_gpu_parts

        items, engines = self._plan(segment, index, artefact)
        return run_gpu_parts(segment, inputs, index, items, self.host, "TensorRT", engines)


def cache_dir() -> Path:
    root = os.environ.get("GIMLET_CACHE_DIR")
    return (Path(root) if root else Path.home() / ".cache" / "gimlet") / "tensorrt"


def engine_key(entry: dict[str, Any], root: Path, tensorrt_version: str, gpu: str) -> str:
    """The content hash an engine is cached by: model, weights, plan entry, TensorRT, GPU."""
    h = hashlib.sha256()
    for rel in (entry["onnx"], entry["data"]):
        h.update((root / rel).read_bytes())
    h.update(json.dumps(entry, sort_keys=True).encode())
    h.update(f"{tensorrt_version}|{gpu}".encode())
    return h.hexdigest()


class Engine:
    """One part's engine and execution context; called with CUDA tensors in part order."""

    def __init__(self, entry: dict[str, Any], root: Path):
        import tensorrt as trt
        import torch

        from .build_engine import build_part, write_atomically

        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        gpu = f"{props.name} sm_{props.major}{props.minor}"
        path = cache_dir() / f"{engine_key(entry, root, trt.__version__, gpu)}.engine"
        if not path.exists():
            print(
                f"gimlet: building the TensorRT engine of {entry['onnx']} (cached in {path})",
                file=sys.stderr,
            )
            write_atomically(path, build_part(entry, root, cache_dir() / "timing.cache"))
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.engine = trt.Runtime(self.logger).deserialize_cuda_engine(path.read_bytes())
        self.context = self.engine.create_execution_context()
        self.inputs = [i["name"] for i in entry["inputs"]]
        self.outputs = [(o["name"], o["dtype"]) for o in entry["outputs"]]

    def __call__(self, args: Sequence[Any]) -> list[Any]:
        import torch

        from gimlet.dtypes import numpy_to_torch

        held = [t.contiguous() for t in args]  # alive until the engine has run
        for name, t in zip(self.inputs, held, strict=True):
            self.context.set_input_shape(name, tuple(t.shape))
            self.context.set_tensor_address(name, t.data_ptr())
        outs = []
        for name, dtype in self.outputs:
            shape = tuple(self.context.get_tensor_shape(name))
            torch_dtype = numpy_to_torch(np.empty(0, dtype=_np_dtype(dtype))).dtype
            out = torch.empty(shape, dtype=torch_dtype, device="cuda")
            self.context.set_tensor_address(name, out.data_ptr())
            outs.append(out)
        stream = torch.cuda.current_stream()
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT could not run the engine")
        stream.synchronize()  # the span is the GPU's time
        return outs


def _np_dtype(name: str) -> Any:
    if name == "bfloat16":
        import ml_dtypes

        return ml_dtypes.bfloat16
    return np.dtype(name)


BACKEND = TensorRTBackend()
