"""The TensorRT backend for NVIDIA segments (artefact kind "tensorrt").

gimlet lowers each compiled part of a segment from `gml` to an ONNX model of its own
(lower.py, with the op converters in ops.py), which TensorRT's ONNX parser reads; the
bundle carries the models, a build script (build_engine.py) with one optimization profile
per part, and the equivalent `trtexec` lines. support.py holds TensorRT's ONNX operator
matrix and what it means for gml ops (which placement reads). backend.py adapts all this
to `gimlet.backends.base.Backend`; its executor builds engines where TensorRT is installed
and otherwise runs the CUDA parts the bundle also carries.
"""
