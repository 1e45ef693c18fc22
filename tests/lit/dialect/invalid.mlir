// RUN: not gimletc opt %s --split-input-file 2>&1 | filecheck %s

// One verifier rule per chunk, each followed by its exact diagnostic. An op
// carrying a source location is reported as `file:line: op: message`; one
// without a location (most cases here) as `op: message`. Parse errors point at
// line:col of this file. Chunks are independent: every one must fail.

func.func @broadcast_mismatch(%x: tensor<2x3xf32>, %y: tensor<4xf32>) {
  %0 = gml.add %x, %y : (tensor<2x3xf32>, tensor<4xf32>) -> tensor<2x3xf32> loc("model.py":7:0)
  func.return
}
// CHECK:      gimletc: error: model.py:7: gml.add: shapes 2x3 and 4 do not broadcast

// -----

func.func @element_type_mismatch(%x: tensor<2x3xf32>, %y: tensor<2x3xf16>) {
  %0 = gml.mul %x, %y : (tensor<2x3xf32>, tensor<2x3xf16>) -> tensor<2x3xf32>
  func.return
}
// CHECK-NEXT: gimletc: error: gml.mul: operand element types differ: f32 vs f16

// -----

func.func @result_shape_mismatch(%x: tensor<2x3xf32>) {
  %0 = gml.sub %x, %x : (tensor<2x3xf32>, tensor<2x3xf32>) -> tensor<3x2xf32>
  func.return
}
// CHECK-NEXT: gimletc: error: gml.sub: result shape 3x2 does not match expected 2x3

// -----

func.func @compare_result_not_i1(%x: tensor<2x3xf32>) {
  %0 = gml.lt %x, %x : (tensor<2x3xf32>, tensor<2x3xf32>) -> tensor<2x3xf32>
  func.return
}
// CHECK-NEXT: gimletc: error: gml.lt: result element type f32 does not match expected i1

// -----

func.func @unary_result_type(%x: tensor<2x3xf32>) {
  %0 = "gml.relu"(%x) : (tensor<2x3xf32>) -> tensor<3x2xf32>
  func.return
}
// CHECK-NEXT: gimletc: error: gml.relu: attribute tensor<2x3xf32> expected from variable 'T', but got tensor<3x2xf32>

// -----

func.func @matmul_contraction_mismatch(%a: tensor<2x3xf32>, %b: tensor<4x5xf32>) {
  %0 = gml.matmul %a, %b : (tensor<2x3xf32>, tensor<4x5xf32>) -> tensor<2x5xf32>
  func.return
}
// CHECK-NEXT: gimletc: error: gml.matmul: contraction dims differ: 2x3 @ 4x5 (3 vs 4)

// -----

func.func @matmul_rank(%a: tensor<3xf32>, %b: tensor<3x5xf32>) {
  %0 = gml.matmul %a, %b : (tensor<3xf32>, tensor<3x5xf32>) -> tensor<5xf32>
  func.return
}
// CHECK-NEXT: gimletc: error: gml.matmul: matmul operands must have rank >= 2

// -----

func.func @reshape_element_count(%x: tensor<2x3xf32>) {
  %0 = gml.reshape %x : tensor<2x3xf32> to tensor<4x2xf32>
  func.return
}
// CHECK-NEXT: gimletc: error: gml.reshape: cannot reshape 2x3 (6 elements) to 4x2 (8 elements)

// -----

func.func @reshape_element_type(%x: tensor<2x3xf32>) {
  %0 = gml.reshape %x : tensor<2x3xf32> to tensor<6xi32>
  func.return
}
// CHECK-NEXT: gimletc: error: gml.reshape: reshape cannot change the element type

// -----

func.func @too_many_dynamic_sizes(%x: tensor<?x3xf32>) {
  %n = gml.dim %x[0] : tensor<?x3xf32>
  %0 = gml.reshape %x dims(%n, %n) : tensor<?x3xf32> to tensor<?x3xf32>
  func.return
}
// CHECK-NEXT: gimletc: error: gml.reshape: expected 1 dynamic size operand(s) for result shape ?x3, got 2

// -----

func.func @missing_dynamic_size() {
  %0 = gml.full 1.0 : tensor<?x3xf32>
  func.return
}
// CHECK-NEXT: gimletc: error: gml.full: expected 1 dynamic size operand(s) for result shape ?x3, got 0

// -----

func.func @arange_rank() {
  %0 = gml.arange 0.0 step 1.0 : tensor<2x3xf32>
  func.return
}
// CHECK-NEXT: gimletc: error: gml.arange: result must be rank 1

// -----

func.func @bad_permutation(%x: tensor<2x3x4xf32>) {
  %0 = gml.permute %x [0, 2, 2] : tensor<2x3x4xf32> to tensor<2x4x4xf32>
  func.return
}
// CHECK-NEXT: gimletc: error: gml.permute: [0, 2, 2] is not a permutation of rank 3

// -----

func.func @expand_incompatible(%x: tensor<2x3xf32>) {
  %0 = gml.expand %x : tensor<2x3xf32> to tensor<4x2x4xf32>
  func.return
}
// CHECK-NEXT: gimletc: error: gml.expand: cannot expand 2x3 to 4x2x4

// -----

func.func @expand_lower_rank(%x: tensor<2x3xf32>) {
  %0 = gml.expand %x : tensor<2x3xf32> to tensor<6xf32>
  func.return
}
// CHECK-NEXT: gimletc: error: gml.expand: cannot expand rank 2 to rank 1

// -----

func.func @param_dynamic_shape() {
  %0 = gml.param "w" : tensor<?x4xf32>
  func.return
}
// CHECK-NEXT: gimletc: error: gml.param: a parameter must have a static shape

// -----

func.func @gelu_bad_approximate(%x: tensor<4xf32>) {
  %0 = gml.gelu %x approximate "fast" : tensor<4xf32>
  func.return
}
// CHECK-NEXT: gimletc: error: gml.gelu: approximate must be "none" or "tanh", got "fast"

// -----

func.func @clamp_min_above_max(%x: tensor<4xf32>) {
  %0 = gml.clamp %x min 2.0 max 1.0 : tensor<4xf32>
  func.return
}
// CHECK-NEXT: gimletc: error: gml.clamp: min must not exceed max

// -----

func.func @where_cond_not_i1(%c: tensor<4xf32>, %x: tensor<4xf32>) {
  %0 = gml.where %c, %x, %x : (tensor<4xf32>, tensor<4xf32>, tensor<4xf32>) -> tensor<4xf32>
  func.return
}
// CHECK-NEXT: gimletc: error: gml.where: condition must have element type i1

// -----

func.func @where_branch_types(%c: tensor<4xi1>, %x: tensor<4xf32>, %y: tensor<4xf16>) {
  %0 = gml.where %c, %x, %y : (tensor<4xi1>, tensor<4xf32>, tensor<4xf16>) -> tensor<4xf32>
  func.return
}
// CHECK-NEXT: gimletc: error: gml.where: the two branches must share an element type

// -----

func.func @layer_norm_weight_shape(%x: tensor<2x8xf32>, %w: tensor<4xf32>) {
  %0 = gml.layer_norm %x weight %w ndim 1 eps 1.0e-05 : tensor<2x8xf32> weight tensor<4xf32> -> tensor<2x8xf32>
  func.return
}
// CHECK-NEXT: gimletc: error: gml.layer_norm: scale/shift shape 4 must equal the normalized shape 8

// -----

func.func @layer_norm_ndim(%x: tensor<2x8xf32>) {
  %0 = gml.layer_norm %x ndim 3 eps 1.0e-05 : tensor<2x8xf32> -> tensor<2x8xf32>
  func.return
}
// CHECK-NEXT: gimletc: error: gml.layer_norm: ndim 3 out of range for rank 2

// -----

func.func @layer_norm_weight_element_type(%x: tensor<2x8xf32>, %w: tensor<8xf16>) {
  %0 = gml.layer_norm %x weight %w ndim 1 eps 1.0e-05 : tensor<2x8xf32> weight tensor<8xf16> -> tensor<2x8xf32>
  func.return
}
// CHECK-NEXT: gimletc: error: gml.layer_norm: scale/shift element type must match the input's

// -----

func.func @sdpa_head_dim_mismatch(%q: tensor<1x4x8x16xf32>, %k: tensor<1x4x8x32xf32>) {
  %0 = gml.sdpa %q, %k, %k : (tensor<1x4x8x16xf32>, tensor<1x4x8x32xf32>, tensor<1x4x8x32xf32>) -> tensor<1x4x8x32xf32>
  func.return
}
// CHECK-NEXT: gimletc: error: gml.sdpa: query and key head dims differ: 16 vs 32

// -----

func.func @sdpa_bad_gqa_ratio(%q: tensor<1x4x8x16xf32>, %k: tensor<1x3x8x16xf32>) {
  %0 = gml.sdpa %q, %k, %k : (tensor<1x4x8x16xf32>, tensor<1x3x8x16xf32>, tensor<1x3x8x16xf32>) -> tensor<1x4x8x16xf32>
  func.return
}
// CHECK-NEXT: gimletc: error: gml.sdpa: 4 query heads cannot share 3 key heads

// -----

func.func @sdpa_rank(%q: tensor<4x8x16xf32>, %k: tensor<1x4x8x16xf32>) {
  %0 = gml.sdpa %q, %k, %k : (tensor<4x8x16xf32>, tensor<1x4x8x16xf32>, tensor<1x4x8x16xf32>) -> tensor<4x8x16xf32>
  func.return
}
// CHECK-NEXT: gimletc: error: gml.sdpa: query, key and value must share a rank >= 2

// -----

func.func @sdpa_element_types(%q: tensor<1x4x8x16xf32>, %k: tensor<1x4x8x16xf16>) {
  %0 = gml.sdpa %q, %k, %k : (tensor<1x4x8x16xf32>, tensor<1x4x8x16xf16>, tensor<1x4x8x16xf16>) -> tensor<1x4x8x16xf32>
  func.return
}
// CHECK-NEXT: gimletc: error: gml.sdpa: query, key and value must share an element type

// -----

func.func @sdpa_kv_seq_mismatch(%q: tensor<1x4x8x16xf32>, %k: tensor<1x4x8x16xf32>, %v: tensor<1x4x6x16xf32>) {
  %0 = gml.sdpa %q, %k, %v : (tensor<1x4x8x16xf32>, tensor<1x4x8x16xf32>, tensor<1x4x6x16xf32>) -> tensor<1x4x8x16xf32>
  func.return
}
// CHECK-NEXT: gimletc: error: gml.sdpa: key and value sequence lengths differ: 8 vs 6

// -----

func.func @sdpa_mask_element_type(%q: tensor<1x4x8x16xf32>, %m: tensor<8x8xi64>) {
  %0 = gml.sdpa %q, %q, %q mask %m : (tensor<1x4x8x16xf32>, tensor<1x4x8x16xf32>, tensor<1x4x8x16xf32>, tensor<8x8xi64>) -> tensor<1x4x8x16xf32>
  func.return
}
// CHECK-NEXT: gimletc: error: gml.sdpa: mask must be i1 (true = attend) or the query's element type

// -----

func.func @sdpa_mask_broadcast(%q: tensor<1x4x8x16xf32>, %m: tensor<8x5xi1>) {
  %0 = gml.sdpa %q, %q, %q mask %m : (tensor<1x4x8x16xf32>, tensor<1x4x8x16xf32>, tensor<1x4x8x16xf32>, tensor<8x5xi1>) -> tensor<1x4x8x16xf32>
  func.return
}
// CHECK-NEXT: gimletc: error: gml.sdpa: mask 8x5 does not broadcast to the scores 1x4x8x8

// -----

func.func @conv_channel_mismatch(%x: tensor<1x3x8x8xf32>, %w: tensor<6x4x3x3xf32>) {
  %0 = gml.conv %x, %w stride [1, 1] padding [1, 1] dilation [1, 1] groups 1 : (tensor<1x3x8x8xf32>, tensor<6x4x3x3xf32>) -> tensor<1x6x8x8xf32>
  func.return
}
// CHECK-NEXT: gimletc: error: gml.conv: input has 3 channels, weight expects 4

// -----

func.func @conv_weight_rank(%x: tensor<1x3x8x8xf32>, %w: tensor<6x3x3xf32>) {
  %0 = gml.conv %x, %w stride [1, 1] padding [1, 1] dilation [1, 1] groups 1 : (tensor<1x3x8x8xf32>, tensor<6x3x3xf32>) -> tensor<1x6x8x8xf32>
  func.return
}
// CHECK-NEXT: gimletc: error: gml.conv: weight rank and stride/padding/dilation must match 2-d input

// -----

func.func @conv_stride_zero(%x: tensor<1x3x8x8xf32>, %w: tensor<6x3x3x3xf32>) {
  %0 = gml.conv %x, %w stride [0, 1] padding [1, 1] dilation [1, 1] groups 1 : (tensor<1x3x8x8xf32>, tensor<6x3x3x3xf32>) -> tensor<1x6x8x8xf32>
  func.return
}
// CHECK-NEXT: gimletc: error: gml.conv: groups, stride and dilation must be positive

// -----

func.func @conv_groups_zero(%x: tensor<1x3x8x8xf32>, %w: tensor<6x3x3x3xf32>) {
  %0 = gml.conv %x, %w stride [1, 1] padding [1, 1] dilation [1, 1] groups 0 : (tensor<1x3x8x8xf32>, tensor<6x3x3x3xf32>) -> tensor<1x6x8x8xf32>
  func.return
}
// CHECK-NEXT: gimletc: error: gml.conv: groups, stride and dilation must be positive

// -----

func.func @conv_weight_element_type(%x: tensor<1x3x8x8xf32>, %w: tensor<6x3x3x3xf16>) {
  %0 = gml.conv %x, %w stride [1, 1] padding [1, 1] dilation [1, 1] groups 1 : (tensor<1x3x8x8xf32>, tensor<6x3x3x3xf16>) -> tensor<1x6x8x8xf32>
  func.return
}
// CHECK-NEXT: gimletc: error: gml.conv: weight element type must match the input's

// -----

func.func @conv_bias_shape(%x: tensor<1x3x8x8xf32>, %w: tensor<6x3x3x3xf32>, %b: tensor<3xf32>) {
  %0 = gml.conv %x, %w bias %b stride [1, 1] padding [1, 1] dilation [1, 1] groups 1 : (tensor<1x3x8x8xf32>, tensor<6x3x3x3xf32>, tensor<3xf32>) -> tensor<1x6x8x8xf32>
  func.return
}
// CHECK-NEXT: gimletc: error: gml.conv: bias must have shape 6 (one per output channel)

// -----

func.func @batch_norm_statistics(%x: tensor<1x3x4x4xf32>, %s: tensor<4xf32>) {
  %0 = gml.batch_norm %x, %s, %s, %s, %s eps 1.0e-05 : (tensor<1x3x4x4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>) -> tensor<1x3x4x4xf32>
  func.return
}
// CHECK-NEXT: gimletc: error: gml.batch_norm: statistics must have shape 3

// -----

func.func @pool_not_nchw(%x: tensor<3x8x8xf32>) {
  %0 = gml.max_pool2d %x kernel [2, 2] stride [2, 2] padding [0, 0] : tensor<3x8x8xf32> to tensor<3x4x4xf32>
  func.return
}
// CHECK-NEXT: gimletc: error: gml.max_pool2d: 2-d pooling takes an NCHW input and 2-element kernel/stride/padding
// (A zero pooling stride crashes the verifier: invalid-pool-stride.mlir, XFAIL.)

// -----

func.func @adaptive_pool_changes_channels(%x: tensor<1x3x8x8xf32>) {
  %0 = gml.adaptive_avg_pool2d %x : tensor<1x3x8x8xf32> to tensor<1x4x1x1xf32>
  func.return
}
// CHECK-NEXT: gimletc: error: gml.adaptive_avg_pool2d: adaptive pooling keeps N and C of an NCHW input

// -----

func.func @adaptive_pool_element_type(%x: tensor<1x3x8x8xf32>) {
  %0 = gml.adaptive_avg_pool2d %x : tensor<1x3x8x8xf32> to tensor<1x3x1x1xf16>
  func.return
}
// CHECK-NEXT: gimletc: error: gml.adaptive_avg_pool2d: adaptive pooling keeps the element type

// -----

func.func @dim_index_out_of_range(%x: tensor<2x3xf32>) {
  %0 = gml.dim %x[2] : tensor<2x3xf32>
  func.return
}
// CHECK-NEXT: gimletc: error: gml.dim: dim index 2 out of range for rank 2

// -----

func.func @softmax_dim_out_of_range(%x: tensor<2x8xf32>) {
  %0 = gml.softmax %x dim 2 : tensor<2x8xf32>
  func.return
}
// CHECK-NEXT: gimletc: error: gml.softmax: dimension 2 out of range for rank 2

// -----

func.func @reduce_dim_out_of_range(%x: tensor<2x5xf32>) {
  %0 = gml.sum %x [5] : tensor<2x5xf32> to tensor<2xf32>
  func.return
}
// CHECK-NEXT: gimletc: error: gml.sum: dimension 5 out of range for rank 2

// -----

func.func @slice_step_zero(%x: tensor<8xf32>) {
  %0 = gml.slice %x dim 0 start 0 end 8 step 0 : tensor<8xf32> to tensor<8xf32>
  func.return
}
// CHECK-NEXT: gimletc: error: gml.slice: slice step must be positive

// -----

func.func @concat_mismatch(%a: tensor<2x3xf32>, %b: tensor<4x5xf32>) {
  %0 = gml.concat %a, %b dim 1 : (tensor<2x3xf32>, tensor<4x5xf32>) -> tensor<2x8xf32>
  func.return
}
// CHECK-NEXT: gimletc: error: gml.concat: concat inputs differ in dim 0: 2 vs 4

// -----

func.func @concat_no_inputs() {
  %0 = gml.concat dim 0 : () -> tensor<2xf32>
  func.return
}
// CHECK-NEXT: gimletc: error: gml.concat: concat needs at least one input

// -----

func.func @concat_element_type(%a: tensor<2x3xf32>, %b: tensor<2x3xi64>) {
  %0 = gml.concat %a, %b dim 1 : (tensor<2x3xf32>, tensor<2x3xi64>) -> tensor<2x6xf32>
  func.return
}
// CHECK-NEXT: gimletc: error: gml.concat: concat inputs must share rank and element type

// -----

func.func @embedding_float_indices(%w: tensor<10x4xf32>, %i: tensor<3xf32>) {
  %0 = gml.embedding %w, %i : (tensor<10x4xf32>, tensor<3xf32>) -> tensor<3x4xf32>
  func.return
}
// CHECK-NEXT: gimletc: error: gml.embedding: embedding indices must be integers

// -----

func.func @index_float_indices(%x: tensor<2x5xf32>, %j: tensor<3xf32>) {
  %0 = gml.index %x[%j] dims [1] : (tensor<2x5xf32>, tensor<3xf32>) -> tensor<2x3xf32>
  func.return
}
// CHECK-NEXT: gimletc: error: gml.index: index tensors must be integers or i1

// -----

func.func @index_dims_not_increasing(%x: tensor<2x5xf32>, %j: tensor<3xi64>) {
  %0 = gml.index %x[%j, %j] dims [1, 0] : (tensor<2x5xf32>, tensor<3xi64>, tensor<3xi64>) -> tensor<3xf32>
  func.return
}
// CHECK-NEXT: gimletc: error: gml.index: dims must be increasing, one per index tensor

// -----

func.func @gather_float_indices(%x: tensor<2x5xf32>, %i: tensor<2x3xf32>) {
  %0 = gml.gather %x, %i dim 1 : (tensor<2x5xf32>, tensor<2x3xf32>) -> tensor<2x3xf32>
  func.return
}
// CHECK-NEXT: gimletc: error: gml.gather: gather indices must be integers

// -----

func.func @gather_index_rank(%x: tensor<2x5xf32>, %i: tensor<3xi64>) {
  %0 = gml.gather %x, %i dim 1 : (tensor<2x5xf32>, tensor<3xi64>) -> tensor<3xf32>
  func.return
}
// CHECK-NEXT: gimletc: error: gml.gather: gather index must have the input's rank

// -----

func.func @gather_dim_out_of_range(%x: tensor<2x5xf32>, %i: tensor<2x3xi64>) {
  %0 = gml.gather %x, %i dim 2 : (tensor<2x5xf32>, tensor<2x3xi64>) -> tensor<2x3xf32>
  func.return
}
// CHECK-NEXT: gimletc: error: gml.gather: dimension 2 out of range for rank 2

// -----

// Integer cumsum widens to i64 like torch; a float input keeps its type, so
// narrowing f32 to i8 is rejected.
func.func @cumsum_narrows(%x: tensor<2x5xf32>) {
  %0 = gml.cumsum %x dim 1 : tensor<2x5xf32> to tensor<2x5xi8>
  func.return
}
// CHECK-NEXT: gimletc: error: gml.cumsum: result element type i8 does not match expected f32

// -----

func.func @fusion_yield_type_mismatch(%x: tensor<4xf32>) {
  %0 = gml.fusion : tensor<4xf16> {
    %1 = gml.relu %x : tensor<4xf32>
    gml.yield %1 : tensor<4xf32>
  }
  func.return
}
// CHECK-NEXT: gimletc: error: gml.fusion: gml.yield types must match the gml.fusion results

// -----

func.func @fusion_without_yield(%x: tensor<4xf32>) {
  %0 = gml.fusion : tensor<4xf32> {
    %1 = gml.relu %x : tensor<4xf32>
  }
  func.return
}
// CHECK-NEXT: gimletc: error: gml.fusion: gml.fusion body must end in gml.yield

// -----

func.func @yield_outside_region(%x: tensor<4xf32>) {
  gml.yield %x : tensor<4xf32>
}
// CHECK-NEXT: gimletc: error: gml.yield: 'gml.yield' expects parent op to be one of 'gml.fusion', 'gml.segment'

// -----

func.func @segment_argument_types(%x: tensor<4xf32>) {
  %r = gml.segment "gpu:0" (%x) : (tensor<4xf32>) -> tensor<4xf32> {
  ^bb0(%a: tensor<4xf16>):
    gml.yield %a : tensor<4xf16>
  }
  func.return
}
// CHECK-NEXT: gimletc: error: gml.segment: segment block arguments must match its inputs

// -----

func.func @segment_yield_type_mismatch(%x: tensor<4xf32>) {
  %r = gml.segment "gpu:0" (%x) : (tensor<4xf32>) -> tensor<4xf16> {
  ^bb0(%a: tensor<4xf32>):
    gml.yield %a : tensor<4xf32>
  }
  func.return
}
// CHECK-NEXT: gimletc: error: gml.segment: gml.yield types must match the gml.segment results

// -----

func.func @segment_captures_value(%x: tensor<4xf32>) {
  %r = gml.segment "gpu:0" () : () -> tensor<4xf32> {
    %0 = gml.neg %x : tensor<4xf32>
    gml.yield %0 : tensor<4xf32>
  }
  func.return
}
// CHECK-NEXT: gimletc: error: gml.segment: Operation using value defined out of its IsolatedFromAbove parent: NegOp(%0 = gml.neg %x : tensor<4xf32>)

// -----

func.func @use_before_def(%x: tensor<4xf32>) {
  %0 = gml.neg %1 : tensor<4xf32> loc("layers.0"("model.py":12:0))
  %1 = gml.relu %x : tensor<4xf32>
  func.return
}
// CHECK-NEXT: gimletc: error: model.py:12: gml.neg: operand #0 does not dominate its use

// -----

func.func @return_type_mismatch(%x: tensor<8xf32>) -> tensor<4xf32> {
  func.return %x : tensor<8xf32>
}
// CHECK-NEXT: gimletc: error: func.return: Expected arguments to have the same types as the function output types: expected [tensor<4xf32>], got [tensor<8xf32>]

// -----

func.func @unknown_op(%x: tensor<4xf32>) {
  %0 = gml.frobnicate %x : tensor<4xf32>
  func.return
}
// CHECK-NEXT: gimletc: error: {{.*}}invalid.mlir:[[# @LINE - 3]]:23: Operation gml.frobnicate is not registered
// CHECK-NEXT: {{^}}  %0 = gml.frobnicate %x : tensor<4xf32>
// CHECK-NEXT: {{^}}                      ^^{{$}}

// -----

func.func @syntax_error(%x: tensor<4xf32>) {
  %0 = gml.relu %x tensor<4xf32>
  func.return
}
// CHECK-NEXT: gimletc: error: {{.*}}invalid.mlir:[[# @LINE - 3]]:20: Expected ':'
// CHECK-NEXT: {{^}}  %0 = gml.relu %x tensor<4xf32>
// CHECK-NEXT: {{^}}                   ^^^^^^{{$}}

// Nothing was accepted, so nothing was printed on stdout.
// CHECK-NOT: builtin.module
