// RUN: gimletc opt %s | gimletc opt - | filecheck %s

// Round trip of every gml op through the printer and parser: the output of one
// `gimletc opt` is parsed again by a second one and must print identically.
// Covers dynamic dims (gml.dim feeding `dims(...)` operands and arith index
// arithmetic), every optional operand and property, gml.fusion, gml.segment
// and gml.yield, and source locations (FileLineColLoc and NameLoc), which must
// survive the trip.

func.func @sources(%x: tensor<2x?xf32>) -> (tensor<4x8xf32>, tensor<3xf32>, tensor<?x8xf32>, tensor<?xi64>, tensor<2x3xf32>, tensor<5xf32>) {
  %w = gml.param "fc.weight" : tensor<4x8xf32>
  %c = gml.constant dense<[1.0, 2.0, 3.0]> : tensor<3xf32>
  %n = gml.dim %x[1] : tensor<2x?xf32>
  %two = arith.constant 2 : index
  %m = arith.muli %n, %two : index
  %s = arith.addi %m, %two : index
  %h = arith.floordivsi %s, %two : index
  %f = gml.full 0.5 dims(%h) : tensor<?x8xf32>
  %r = gml.arange 0.0 step 1.0 dims(%n) : tensor<?xi64>
  %z = gml.full 0.0 : tensor<2x3xf32>
  %a = gml.arange 1.0 step 2.0 : tensor<5xf32>
  func.return %w, %c, %f, %r, %z, %a : tensor<4x8xf32>, tensor<3xf32>, tensor<?x8xf32>, tensor<?xi64>, tensor<2x3xf32>, tensor<5xf32>
}
// CHECK-LABEL: func.func @sources(%x: tensor<2x?xf32>) -> (tensor<4x8xf32>, tensor<3xf32>, tensor<?x8xf32>, tensor<?xi64>, tensor<2x3xf32>, tensor<5xf32>) {
// CHECK-NEXT:    %w = gml.param "fc.weight" : tensor<4x8xf32>
// CHECK-NEXT:    %c = gml.constant dense<[1.000000e+00, 2.000000e+00, 3.000000e+00]> : tensor<3xf32>
// CHECK-NEXT:    %n = gml.dim %x[1] : tensor<2x?xf32>
// CHECK-NEXT:    %two = arith.constant 2 : index
// CHECK-NEXT:    %m = arith.muli %n, %two : index
// CHECK-NEXT:    %s = arith.addi %m, %two : index
// CHECK-NEXT:    %h = arith.floordivsi %s, %two : index
// CHECK-NEXT:    %f = gml.full 5.000000e-01 dims(%h) : tensor<?x8xf32>
// CHECK-NEXT:    %r = gml.arange 0.000000e+00 step 1.000000e+00 dims(%n) : tensor<?xi64>
// CHECK-NEXT:    %z = gml.full 0.000000e+00 : tensor<2x3xf32>
// CHECK-NEXT:    %a = gml.arange 1.000000e+00 step 2.000000e+00 : tensor<5xf32>
// CHECK-NEXT:    func.return %w, %c, %f, %r, %z, %a : tensor<4x8xf32>, tensor<3xf32>, tensor<?x8xf32>, tensor<?xi64>, tensor<2x3xf32>, tensor<5xf32>
// CHECK-NEXT:  }

func.func @elementwise(%x: tensor<2x3xf32>, %y: tensor<3xf32>, %b: tensor<2x3xi1>) {
  %0 = gml.neg %x : tensor<2x3xf32>
  %1 = gml.exp %x : tensor<2x3xf32>
  %2 = gml.log %x : tensor<2x3xf32>
  %3 = gml.sqrt %x : tensor<2x3xf32>
  %4 = gml.rsqrt %x : tensor<2x3xf32>
  %5 = gml.abs %x : tensor<2x3xf32>
  %6 = gml.tanh %x : tensor<2x3xf32>
  %7 = gml.sigmoid %x : tensor<2x3xf32>
  %8 = gml.relu %x : tensor<2x3xf32>
  %9 = gml.sin %x : tensor<2x3xf32>
  %10 = gml.cos %x : tensor<2x3xf32>
  %11 = gml.erf %x : tensor<2x3xf32>
  %12 = gml.reciprocal %x : tensor<2x3xf32>
  %13 = gml.not %b : tensor<2x3xi1>
  %14 = gml.silu %x : tensor<2x3xf32>
  %15 = gml.gelu %x : tensor<2x3xf32>
  %16 = gml.gelu %x approximate "tanh" : tensor<2x3xf32>
  %17 = gml.clamp %x min -1.0 max 1.0 : tensor<2x3xf32>
  %18 = gml.clamp %x min 0.0 : tensor<2x3xf32>
  %19 = gml.clamp %x max 6.0 : tensor<2x3xf32>
  %20 = gml.add %x, %y : (tensor<2x3xf32>, tensor<3xf32>) -> tensor<2x3xf32>
  %21 = gml.sub %x, %y : (tensor<2x3xf32>, tensor<3xf32>) -> tensor<2x3xf32>
  %22 = gml.mul %x, %y : (tensor<2x3xf32>, tensor<3xf32>) -> tensor<2x3xf32>
  %23 = gml.div %x, %y : (tensor<2x3xf32>, tensor<3xf32>) -> tensor<2x3xf32>
  %24 = gml.pow %x, %y : (tensor<2x3xf32>, tensor<3xf32>) -> tensor<2x3xf32>
  %25 = gml.maximum %x, %y : (tensor<2x3xf32>, tensor<3xf32>) -> tensor<2x3xf32>
  %26 = gml.minimum %x, %y : (tensor<2x3xf32>, tensor<3xf32>) -> tensor<2x3xf32>
  %27 = gml.and %b, %b : (tensor<2x3xi1>, tensor<2x3xi1>) -> tensor<2x3xi1>
  %28 = gml.or %b, %b : (tensor<2x3xi1>, tensor<2x3xi1>) -> tensor<2x3xi1>
  %29 = gml.eq %x, %y : (tensor<2x3xf32>, tensor<3xf32>) -> tensor<2x3xi1>
  %30 = gml.ne %x, %y : (tensor<2x3xf32>, tensor<3xf32>) -> tensor<2x3xi1>
  %31 = gml.lt %x, %y : (tensor<2x3xf32>, tensor<3xf32>) -> tensor<2x3xi1>
  %32 = gml.le %x, %y : (tensor<2x3xf32>, tensor<3xf32>) -> tensor<2x3xi1>
  %33 = gml.gt %x, %y : (tensor<2x3xf32>, tensor<3xf32>) -> tensor<2x3xi1>
  %34 = gml.ge %x, %y : (tensor<2x3xf32>, tensor<3xf32>) -> tensor<2x3xi1>
  %35 = gml.where %b, %x, %y : (tensor<2x3xi1>, tensor<2x3xf32>, tensor<3xf32>) -> tensor<2x3xf32>
  %36 = gml.cast %x : tensor<2x3xf32> to tensor<2x3xf16>
  func.return
}
// CHECK-LABEL: func.func @elementwise(%x: tensor<2x3xf32>, %y: tensor<3xf32>, %b: tensor<2x3xi1>) {
// CHECK-NEXT:    %0 = gml.neg %x : tensor<2x3xf32>
// CHECK-NEXT:    %1 = gml.exp %x : tensor<2x3xf32>
// CHECK-NEXT:    %2 = gml.log %x : tensor<2x3xf32>
// CHECK-NEXT:    %3 = gml.sqrt %x : tensor<2x3xf32>
// CHECK-NEXT:    %4 = gml.rsqrt %x : tensor<2x3xf32>
// CHECK-NEXT:    %5 = gml.abs %x : tensor<2x3xf32>
// CHECK-NEXT:    %6 = gml.tanh %x : tensor<2x3xf32>
// CHECK-NEXT:    %7 = gml.sigmoid %x : tensor<2x3xf32>
// CHECK-NEXT:    %8 = gml.relu %x : tensor<2x3xf32>
// CHECK-NEXT:    %9 = gml.sin %x : tensor<2x3xf32>
// CHECK-NEXT:    %10 = gml.cos %x : tensor<2x3xf32>
// CHECK-NEXT:    %11 = gml.erf %x : tensor<2x3xf32>
// CHECK-NEXT:    %12 = gml.reciprocal %x : tensor<2x3xf32>
// CHECK-NEXT:    %13 = gml.not %b : tensor<2x3xi1>
// CHECK-NEXT:    %14 = gml.silu %x : tensor<2x3xf32>
// CHECK-NEXT:    %15 = gml.gelu %x : tensor<2x3xf32>
// CHECK-NEXT:    %16 = gml.gelu %x approximate "tanh" : tensor<2x3xf32>
// CHECK-NEXT:    %17 = gml.clamp %x min -1.000000e+00 max 1.000000e+00 : tensor<2x3xf32>
// CHECK-NEXT:    %18 = gml.clamp %x min 0.000000e+00 : tensor<2x3xf32>
// CHECK-NEXT:    %19 = gml.clamp %x max 6.000000e+00 : tensor<2x3xf32>
// CHECK-NEXT:    %20 = gml.add %x, %y : (tensor<2x3xf32>, tensor<3xf32>) -> tensor<2x3xf32>
// CHECK-NEXT:    %21 = gml.sub %x, %y : (tensor<2x3xf32>, tensor<3xf32>) -> tensor<2x3xf32>
// CHECK-NEXT:    %22 = gml.mul %x, %y : (tensor<2x3xf32>, tensor<3xf32>) -> tensor<2x3xf32>
// CHECK-NEXT:    %23 = gml.div %x, %y : (tensor<2x3xf32>, tensor<3xf32>) -> tensor<2x3xf32>
// CHECK-NEXT:    %24 = gml.pow %x, %y : (tensor<2x3xf32>, tensor<3xf32>) -> tensor<2x3xf32>
// CHECK-NEXT:    %25 = gml.maximum %x, %y : (tensor<2x3xf32>, tensor<3xf32>) -> tensor<2x3xf32>
// CHECK-NEXT:    %26 = gml.minimum %x, %y : (tensor<2x3xf32>, tensor<3xf32>) -> tensor<2x3xf32>
// CHECK-NEXT:    %27 = gml.and %b, %b : (tensor<2x3xi1>, tensor<2x3xi1>) -> tensor<2x3xi1>
// CHECK-NEXT:    %28 = gml.or %b, %b : (tensor<2x3xi1>, tensor<2x3xi1>) -> tensor<2x3xi1>
// CHECK-NEXT:    %29 = gml.eq %x, %y : (tensor<2x3xf32>, tensor<3xf32>) -> tensor<2x3xi1>
// CHECK-NEXT:    %30 = gml.ne %x, %y : (tensor<2x3xf32>, tensor<3xf32>) -> tensor<2x3xi1>
// CHECK-NEXT:    %31 = gml.lt %x, %y : (tensor<2x3xf32>, tensor<3xf32>) -> tensor<2x3xi1>
// CHECK-NEXT:    %32 = gml.le %x, %y : (tensor<2x3xf32>, tensor<3xf32>) -> tensor<2x3xi1>
// CHECK-NEXT:    %33 = gml.gt %x, %y : (tensor<2x3xf32>, tensor<3xf32>) -> tensor<2x3xi1>
// CHECK-NEXT:    %34 = gml.ge %x, %y : (tensor<2x3xf32>, tensor<3xf32>) -> tensor<2x3xi1>
// CHECK-NEXT:    %35 = gml.where %b, %x, %y : (tensor<2x3xi1>, tensor<2x3xf32>, tensor<3xf32>) -> tensor<2x3xf32>
// CHECK-NEXT:    %36 = gml.cast %x : tensor<2x3xf32> to tensor<2x3xf16>
// CHECK-NEXT:    func.return
// CHECK-NEXT:  }

func.func @shape_ops(%x: tensor<?x6xf32>, %y: tensor<?x2xf32>) {
  %n = gml.dim %x[0] : tensor<?x6xf32>
  %0 = gml.reshape %x dims(%n) : tensor<?x6xf32> to tensor<?x2x3xf32>
  %c6 = arith.constant 6 : index
  %n6 = arith.muli %n, %c6 : index
  %1 = gml.reshape %x dims(%n6) : tensor<?x6xf32> to tensor<?xf32>
  %2 = gml.expand %x dims(%n) : tensor<?x6xf32> to tensor<4x?x6xf32>
  %3 = gml.permute %x [1, 0] : tensor<?x6xf32> to tensor<6x?xf32>
  %4 = gml.slice %x dim 1 start 0 end 4 step 2 : tensor<?x6xf32> to tensor<?x2xf32>
  %5 = gml.slice %x dim 0 start 0 end 0 step 1 dyn_start %n dyn_end %n : tensor<?x6xf32> to tensor<?x6xf32>
  %6 = gml.slice %x dim 0 start 1 end 0 step 1 dyn_end %n : tensor<?x6xf32> to tensor<?x6xf32>
  %7 = gml.concat %x, %y dim 1 : (tensor<?x6xf32>, tensor<?x2xf32>) -> tensor<?x8xf32>
  func.return
}
// CHECK-LABEL: func.func @shape_ops(%x: tensor<?x6xf32>, %y: tensor<?x2xf32>) {
// CHECK-NEXT:    %n = gml.dim %x[0] : tensor<?x6xf32>
// CHECK-NEXT:    %0 = gml.reshape %x dims(%n) : tensor<?x6xf32> to tensor<?x2x3xf32>
// CHECK-NEXT:    %c6 = arith.constant 6 : index
// CHECK-NEXT:    %n6 = arith.muli %n, %c6 : index
// CHECK-NEXT:    %1 = gml.reshape %x dims(%n6) : tensor<?x6xf32> to tensor<?xf32>
// CHECK-NEXT:    %2 = gml.expand %x dims(%n) : tensor<?x6xf32> to tensor<4x?x6xf32>
// CHECK-NEXT:    %3 = gml.permute %x [1, 0] : tensor<?x6xf32> to tensor<6x?xf32>
// CHECK-NEXT:    %4 = gml.slice %x dim 1 start 0 end 4 step 2 : tensor<?x6xf32> to tensor<?x2xf32>
// CHECK-NEXT:    %5 = gml.slice %x dim 0 start 0 end 0 step 1 dyn_start %n dyn_end %n : tensor<?x6xf32> to tensor<?x6xf32>
// CHECK-NEXT:    %6 = gml.slice %x dim 0 start 1 end 0 step 1 dyn_end %n : tensor<?x6xf32> to tensor<?x6xf32>
// CHECK-NEXT:    %7 = gml.concat %x, %y dim 1 : (tensor<?x6xf32>, tensor<?x2xf32>) -> tensor<?x8xf32>
// CHECK-NEXT:    func.return
// CHECK-NEXT:  }

func.func @indexing(%w: tensor<10x4xf32>, %ids: tensor<2x3xi64>, %x: tensor<2x5xf32>, %j: tensor<3xi64>) {
  %0 = gml.embedding %w, %ids : (tensor<10x4xf32>, tensor<2x3xi64>) -> tensor<2x3x4xf32>
  %1 = gml.gather %x, %ids dim 1 : (tensor<2x5xf32>, tensor<2x3xi64>) -> tensor<2x3xf32>
  %2 = gml.index %x[%j] dims [1] : (tensor<2x5xf32>, tensor<3xi64>) -> tensor<2x3xf32>
  %3 = gml.cumsum %x dim 1 : tensor<2x5xf32> to tensor<2x5xf32>
  func.return
}
// CHECK-LABEL: func.func @indexing(%w: tensor<10x4xf32>, %ids: tensor<2x3xi64>, %x: tensor<2x5xf32>, %j: tensor<3xi64>) {
// CHECK-NEXT:    %0 = gml.embedding %w, %ids : (tensor<10x4xf32>, tensor<2x3xi64>) -> tensor<2x3x4xf32>
// CHECK-NEXT:    %1 = gml.gather %x, %ids dim 1 : (tensor<2x5xf32>, tensor<2x3xi64>) -> tensor<2x3xf32>
// CHECK-NEXT:    %2 = gml.index %x[%j] dims [1] : (tensor<2x5xf32>, tensor<3xi64>) -> tensor<2x3xf32>
// CHECK-NEXT:    %3 = gml.cumsum %x dim 1 : tensor<2x5xf32> to tensor<2x5xf32>
// CHECK-NEXT:    func.return
// CHECK-NEXT:  }

func.func @reductions(%x: tensor<2x3x4xf32>, %b: tensor<2x3xi1>) {
  %0 = gml.sum %x [1] : tensor<2x3x4xf32> to tensor<2x4xf32>
  %1 = gml.mean %x [-1] keepdim true : tensor<2x3x4xf32> to tensor<2x3x1xf32>
  %2 = gml.amax %x [0, 2] : tensor<2x3x4xf32> to tensor<3xf32>
  %3 = gml.amin %x [] : tensor<2x3x4xf32> to tensor<f32>
  %4 = gml.any %b [1] : tensor<2x3xi1> to tensor<2xi1>
  func.return
}
// CHECK-LABEL: func.func @reductions(%x: tensor<2x3x4xf32>, %b: tensor<2x3xi1>) {
// CHECK-NEXT:    %0 = gml.sum %x [1] : tensor<2x3x4xf32> to tensor<2x4xf32>
// CHECK-NEXT:    %1 = gml.mean %x [-1] keepdim true : tensor<2x3x4xf32> to tensor<2x3x1xf32>
// CHECK-NEXT:    %2 = gml.amax %x [0, 2] : tensor<2x3x4xf32> to tensor<3xf32>
// CHECK-NEXT:    %3 = gml.amin %x [] : tensor<2x3x4xf32> to tensor<f32>
// CHECK-NEXT:    %4 = gml.any %b [1] : tensor<2x3xi1> to tensor<2xi1>
// CHECK-NEXT:    func.return
// CHECK-NEXT:  }

func.func @nn(%x: tensor<2x4x8xf32>, %w: tensor<8x16xf32>, %g: tensor<8xf32>, %q: tensor<1x4x?x16xf32>, %kv: tensor<1x2x?x16xf32>, %mask: tensor<?x?xi1>) {
  %0 = gml.matmul %x, %w : (tensor<2x4x8xf32>, tensor<8x16xf32>) -> tensor<2x4x16xf32>
  %1 = gml.softmax %x dim -1 : tensor<2x4x8xf32>
  %2 = gml.log_softmax %x dim 1 : tensor<2x4x8xf32>
  %3 = gml.layer_norm %x weight %g bias %g ndim 1 eps 1.0e-05 : tensor<2x4x8xf32> weight tensor<8xf32> bias tensor<8xf32> -> tensor<2x4x8xf32>
  %4 = gml.layer_norm %x weight %g ndim 1 eps 1.0e-05 : tensor<2x4x8xf32> weight tensor<8xf32> -> tensor<2x4x8xf32>
  %5 = gml.layer_norm %x ndim 2 eps 1.0e-06 : tensor<2x4x8xf32> -> tensor<2x4x8xf32>
  %6 = gml.sdpa %q, %kv, %kv : (tensor<1x4x?x16xf32>, tensor<1x2x?x16xf32>, tensor<1x2x?x16xf32>) -> tensor<1x4x?x16xf32>
  %7 = gml.sdpa %q, %kv, %kv mask %mask causal true scale 0.25 : (tensor<1x4x?x16xf32>, tensor<1x2x?x16xf32>, tensor<1x2x?x16xf32>, tensor<?x?xi1>) -> tensor<1x4x?x16xf32>
  func.return
}
// CHECK-LABEL: func.func @nn(%x: tensor<2x4x8xf32>, %w: tensor<8x16xf32>, %g: tensor<8xf32>, %q: tensor<1x4x?x16xf32>, %kv: tensor<1x2x?x16xf32>, %mask: tensor<?x?xi1>) {
// CHECK-NEXT:    %0 = gml.matmul %x, %w : (tensor<2x4x8xf32>, tensor<8x16xf32>) -> tensor<2x4x16xf32>
// CHECK-NEXT:    %1 = gml.softmax %x dim -1 : tensor<2x4x8xf32>
// CHECK-NEXT:    %2 = gml.log_softmax %x dim 1 : tensor<2x4x8xf32>
// CHECK-NEXT:    %3 = gml.layer_norm %x weight %g bias %g ndim 1 eps 1.000000e-05 : tensor<2x4x8xf32> weight tensor<8xf32> bias tensor<8xf32> -> tensor<2x4x8xf32>
// CHECK-NEXT:    %4 = gml.layer_norm %x weight %g ndim 1 eps 1.000000e-05 : tensor<2x4x8xf32> weight tensor<8xf32> -> tensor<2x4x8xf32>
// CHECK-NEXT:    %5 = gml.layer_norm %x ndim 2 eps 1.000000e-06 : tensor<2x4x8xf32> -> tensor<2x4x8xf32>
// CHECK-NEXT:    %6 = gml.sdpa %q, %kv, %kv : (tensor<1x4x?x16xf32>, tensor<1x2x?x16xf32>, tensor<1x2x?x16xf32>) -> tensor<1x4x?x16xf32>
// CHECK-NEXT:    %7 = gml.sdpa %q, %kv, %kv mask %mask causal true scale 2.500000e-01 : (tensor<1x4x?x16xf32>, tensor<1x2x?x16xf32>, tensor<1x2x?x16xf32>, tensor<?x?xi1>) -> tensor<1x4x?x16xf32>
// CHECK-NEXT:    func.return
// CHECK-NEXT:  }

func.func @conv(%x: tensor<1x3x8x8xf32>, %w: tensor<6x3x3x3xf32>, %b: tensor<6xf32>, %c: tensor<6xf32>) {
  %0 = gml.conv %x, %w stride [1, 1] padding [1, 1] dilation [1, 1] groups 1 : (tensor<1x3x8x8xf32>, tensor<6x3x3x3xf32>) -> tensor<1x6x8x8xf32>
  %1 = gml.conv %x, %w bias %b stride [2, 2] padding [0, 0] dilation [1, 1] groups 1 : (tensor<1x3x8x8xf32>, tensor<6x3x3x3xf32>, tensor<6xf32>) -> tensor<1x6x3x3xf32>
  %2 = gml.batch_norm %0, %b, %c, %b, %c eps 1.0e-05 : (tensor<1x6x8x8xf32>, tensor<6xf32>, tensor<6xf32>, tensor<6xf32>, tensor<6xf32>) -> tensor<1x6x8x8xf32>
  %3 = gml.max_pool2d %2 kernel [2, 2] stride [2, 2] padding [0, 0] : tensor<1x6x8x8xf32> to tensor<1x6x4x4xf32>
  %4 = gml.avg_pool2d %2 kernel [3, 3] stride [2, 2] padding [1, 1] ceil_mode true : tensor<1x6x8x8xf32> to tensor<1x6x5x5xf32>
  %5 = gml.adaptive_avg_pool2d %2 : tensor<1x6x8x8xf32> to tensor<1x6x1x1xf32>
  func.return
}
// CHECK-LABEL: func.func @conv(%x: tensor<1x3x8x8xf32>, %w: tensor<6x3x3x3xf32>, %b: tensor<6xf32>, %c: tensor<6xf32>) {
// CHECK-NEXT:    %0 = gml.conv %x, %w stride [1, 1] padding [1, 1] dilation [1, 1] groups 1 : (tensor<1x3x8x8xf32>, tensor<6x3x3x3xf32>) -> tensor<1x6x8x8xf32>
// CHECK-NEXT:    %1 = gml.conv %x, %w bias %b stride [2, 2] padding [0, 0] dilation [1, 1] groups 1 : (tensor<1x3x8x8xf32>, tensor<6x3x3x3xf32>, tensor<6xf32>) -> tensor<1x6x3x3xf32>
// CHECK-NEXT:    %2 = gml.batch_norm %0, %b, %c, %b, %c eps 1.000000e-05 : (tensor<1x6x8x8xf32>, tensor<6xf32>, tensor<6xf32>, tensor<6xf32>, tensor<6xf32>) -> tensor<1x6x8x8xf32>
// CHECK-NEXT:    %3 = gml.max_pool2d %2 kernel [2, 2] stride [2, 2] padding [0, 0] : tensor<1x6x8x8xf32> to tensor<1x6x4x4xf32>
// CHECK-NEXT:    %4 = gml.avg_pool2d %2 kernel [3, 3] stride [2, 2] padding [1, 1] ceil_mode true : tensor<1x6x8x8xf32> to tensor<1x6x5x5xf32>
// CHECK-NEXT:    %5 = gml.adaptive_avg_pool2d %2 : tensor<1x6x8x8xf32> to tensor<1x6x1x1xf32>
// CHECK-NEXT:    func.return
// CHECK-NEXT:  }

// A multi-result gml.fusion: the `%r:2` group prints as two names.
func.func @fusion(%x: tensor<?x4xf32>, %y: tensor<4xf32>) -> (tensor<?x4xf32>, tensor<?x4xf32>) {
  %r:2 = gml.fusion : tensor<?x4xf32>, tensor<?x4xf32> {
    %0 = gml.add %x, %y : (tensor<?x4xf32>, tensor<4xf32>) -> tensor<?x4xf32> loc("model.py":3:0)
    %1 = gml.relu %0 : tensor<?x4xf32> loc("layers.0"("model.py":4:0))
    gml.yield %0, %1 : tensor<?x4xf32>, tensor<?x4xf32>
  } loc("layers.0"("model.py":4:0))
  func.return %r#0, %r#1 : tensor<?x4xf32>, tensor<?x4xf32>
}
// CHECK-LABEL: func.func @fusion(%x: tensor<?x4xf32>, %y: tensor<4xf32>) -> (tensor<?x4xf32>, tensor<?x4xf32>) {
// CHECK-NEXT:    %r, %r_1 = gml.fusion : tensor<?x4xf32>, tensor<?x4xf32> {
// CHECK-NEXT:      %0 = gml.add %x, %y : (tensor<?x4xf32>, tensor<4xf32>) -> tensor<?x4xf32> loc("model.py":3:0)
// CHECK-NEXT:      %1 = gml.relu %0 : tensor<?x4xf32> loc("layers.0"("model.py":4:0))
// CHECK-NEXT:      gml.yield %0, %1 : tensor<?x4xf32>, tensor<?x4xf32>
// CHECK-NEXT:    } loc("layers.0"("model.py":4:0))
// CHECK-NEXT:    func.return %r, %r_1 : tensor<?x4xf32>, tensor<?x4xf32>
// CHECK-NEXT:  }

// Both location forms the importer emits print back verbatim; loc(unknown)
// carries nothing and is left out.
func.func @locations(%x: tensor<4xf32> {gml.name = "x"}) -> tensor<4xf32> {
  %0 = gml.exp %x : tensor<4xf32> loc("model.py":3:0)
  %1 = gml.neg %0 : tensor<4xf32> loc("layers.0"("model.py":3:0))
  %2 = gml.abs %1 : tensor<4xf32> loc(unknown)
  func.return %2 : tensor<4xf32> loc("layers.0.fc"("/src/model.py":12:4))
}
// CHECK-LABEL: func.func @locations(%x: tensor<4xf32> {gml.name = "x"}) -> tensor<4xf32> {
// CHECK-NEXT:    %0 = gml.exp %x : tensor<4xf32> loc("model.py":3:0)
// CHECK-NEXT:    %1 = gml.neg %0 : tensor<4xf32> loc("layers.0"("model.py":3:0))
// CHECK-NEXT:    %2 = gml.abs %1 : tensor<4xf32>{{$}}
// CHECK-NEXT:    func.return %2 : tensor<4xf32> loc("layers.0.fc"("/src/model.py":12:4))
// CHECK-NEXT:  }

// gml.segment: a region isolated from above whose inputs enter as block
// arguments, placed on the device it names.
func.func @segment(%x: tensor<4xf32>, %y: tensor<4xf32>) -> tensor<4xf32> {
  %r = gml.segment "gpu:0" (%x, %y) : (tensor<4xf32>, tensor<4xf32>) -> (tensor<4xf32>) {
  ^bb0(%a: tensor<4xf32>, %b: tensor<4xf32>):
    %0 = gml.add %a, %b : (tensor<4xf32>, tensor<4xf32>) -> tensor<4xf32> loc("model.py":7:0)
    gml.yield %0 : tensor<4xf32>
  } loc("layers.1"("model.py":7:0))
  func.return %r : tensor<4xf32>
}
// CHECK-LABEL: func.func @segment(%x: tensor<4xf32>, %y: tensor<4xf32>) -> tensor<4xf32> {
// CHECK-NEXT:    %r = gml.segment "gpu:0"(%x, %y) : (tensor<4xf32>, tensor<4xf32>) -> tensor<4xf32> {
// CHECK-NEXT:    ^bb0(%a: tensor<4xf32>, %b: tensor<4xf32>):
// CHECK-NEXT:      %0 = gml.add %a, %b : (tensor<4xf32>, tensor<4xf32>) -> tensor<4xf32> loc("model.py":7:0)
// CHECK-NEXT:      gml.yield %0 : tensor<4xf32>
// CHECK-NEXT:    } loc("layers.1"("model.py":7:0))
// CHECK-NEXT:    func.return %r : tensor<4xf32>
// CHECK-NEXT:  }
