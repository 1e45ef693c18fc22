"""The GPU lowering's switches and tuning constants, in a module of their own: each
lowering module (codegen.py, lower_*.py) reads them here as it lowers, never a copy made
at import, so a value set before a function is lowered takes effect. `GIMLET_GPU_*`
environment variables set the defaults; tests and benchmarks set a switch here
(`switches.PDL = False`, or pytest's monkeypatch) to compare or to rule a change out."""

from __future__ import annotations

import os

# cuBLAS attention reading q/k/v through strides (no copies); GIMLET_GPU_FOLD_ATTENTION=0
# turns it off (to compare, or to rule it out).
FOLD_ATTENTION = os.environ.get("GIMLET_GPU_FOLD_ATTENTION", "1") == "1"
# Prefill attention in f16/bf16 as one flash-attention kernel (gml::attention_prefill,
# tensor cores, no scores in memory) instead of two cuBLAS GEMMs around a softmax; on
# since the H200 ran it (gpu_tests.md run 10; GPT-2 prefill -0.125 ms, gpu_gpt2.md run G).
FLASH_PREFILL = os.environ.get("GIMLET_GPU_FLASH", "1") == "1"
# Linear layers on the GEMM path through cuBLASLt with bias/GELU/residual in its epilogue
# (the runtime library always has it), and weights with an odd number of outputs padded
# to an aligned width: on by default since the H200 ran them (gpu_tests.md run 9; GPT-2
# prefill 1.56 -> 1.10 ms, gpu_gpt2.md run F); "0" turns either off.
VENDOR_EPILOGUE = os.environ.get("GIMLET_GPU_CUBLASLT", "1") == "1"
PAD_WEIGHTS = os.environ.get("GIMLET_GPU_PAD_WEIGHTS", "1") == "1"
# Decode's chain (GEMVs, split-KV attention and its combine) launched with programmatic
# dependent launch (gml::launch_pdl): each kernel starts while the one before it ends, a
# GEMV streaming its weight meanwhile; "0" launches them with <<<>>>.
PDL = os.environ.get("GIMLET_GPU_PDL", "1") == "1"
# Runs of those kernels as one persistent kernel, grid barriers between them (chains.py,
# gml::launch_chain). Off unless "1": on the H200 GPT-2's decode chain took 550 us against
# 412 us of kernels launched one by one (benchmarks/results/gpu_chain.md), so it is there
# to be worked on, not to be used.
CHAIN = os.environ.get("GIMLET_GPU_CHAIN", "0") == "1"
# a decode GEMV's 16-byte weight loads in flight a lane: a column's (up to 16) where k is
# static, so k = 3072 is one batch, not two; "0" keeps 8 (gml::gemv_nt's U)
GEMV_LOADS_PER_COLUMN = os.environ.get("GIMLET_GPU_GEMV_LOADS", "1") == "1"
# decode kernels issue what they can before their wait and load what the previous kernel
# wrote all at once after it: a GEMV's epilogue operands beside x after the wait, the
# split attention's KV cache rows before it where the cache is the segment's input; "0"
# keeps each load where its use is
DECODE_PREFETCH = os.environ.get("GIMLET_GPU_PREFETCH", "1") == "1"
# a decode GEMV after a layer norm loads the norm's weight and bias for its first chunks
# into registers before its wait (more registers: 74 instead of 61 for GPT-2's qkv)
NORM_EARLY = os.environ.get("GIMLET_GPU_NORM_EARLY", "1") == "1"
# a decode GEMV with too few columns to fill the GPU a warp each (GPT-2's fc2 and proj)
# splits each column's k over 2-8 warps of a block (_gemv_split); "0": a warp a column
GEMV_SPLIT = os.environ.get("GIMLET_GPU_GEMV_SPLIT", "1") == "1"
CHAIN_BLOCKS = int(os.environ.get("GIMLET_GPU_CHAIN_BLOCKS", "1"))  # a chain's blocks an SM
# a layer norm feeding a decode GEMV is folded into its weight (gml::LnFoldRows: the
# statistics from the product's own pass over x); "0": each warp normalizes x first
FOLD_NORM = os.environ.get("GIMLET_GPU_FOLD_NORM", "1") == "1"
# a decode GEMV prefetches the next one's weight into L2 (its first L2_AHEAD_BYTES: a
# vocabulary-sized head is larger than L2) as it starts (gml::L2Ahead); "0": none
L2_AHEAD = os.environ.get("GIMLET_GPU_L2_AHEAD", "1") == "1"
L2_AHEAD_BYTES = 16 << 20
# "1": chain kernels print, for blocks 0 and last, each phase's cycles up to its barrier,
# after it, and to arrive at the next (gml::run_phase); a diagnosis, not for use
CHAIN_TRACE = os.environ.get("GIMLET_GPU_CHAIN_TRACE", "0") == "1"
# layer norm keeps a row in registers up to this many elements (a warp a row up to 1024
# on NVIDIA, 2048 on AMD: 32 a lane; a block a row beyond); the variant is the smallest
# that holds the row
LN_ROWS = (128, 256, 512, 1024, 2048, 4096, 8192)
PADDED_SCRATCH_BYTES = 16 << 20  # a padded product copied out unpadded: this much at a time

# Decode attention splits the keys into chunks so that blocks x chunks fills the GPU
# (an H200 has 132 SMs: two blocks each); a chunk holds 32..256 keys, its scores in
# shared memory.
DECODE_TARGET_BLOCKS = 264
# in a persistent chain (its blocks an SM x 132 SMs): one round of the chain's blocks
CHAIN_TARGET_SMS = 132
DECODE_CHUNK_MIN, DECODE_CHUNK_MAX = 32, 256

# Prefill attention splits the keys when its row blocks would not fill the GPU (fewer than
# an H200's 132 SMs): chunks of a multiple of 128 keys (the kernel's key tile is 64 or
# 32), enough of them for about 4 blocks an SM, each chunk at least 128 keys.
PREFILL_SPLIT_BELOW, PREFILL_TARGET_BLOCKS, PREFILL_CHUNK_MIN = 132, 528, 128
PREFILL_ROWS = 64  # gml::ATTN_PREFILL_ROWS
