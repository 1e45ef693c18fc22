// RUN: gimletc opt %s --pass-pipeline=outline-segments | filecheck %s

// A weight (gml.param) and a layout change of it (the transposed %wt) are
// free: each segment that reads them gets its own copy, so the weight never
// crosses between devices. Neither segment takes a tensor operand for it, and
// the originals, now unused, leave the function body.

func.func @main(%x: tensor<2x4xf32>) -> tensor<2x4xf32> {
  %w = gml.param "w" : tensor<4x4xf32>
  %wt = gml.permute %w [1, 0] : tensor<4x4xf32> to tensor<4x4xf32>
  %0 = gml.matmul %x, %wt {gml.device = "cpu0"} : (tensor<2x4xf32>, tensor<4x4xf32>) -> tensor<2x4xf32>
  %1 = gml.matmul %0, %wt {gml.device = "gpu0"} : (tensor<2x4xf32>, tensor<4x4xf32>) -> tensor<2x4xf32>
  func.return %1 : tensor<2x4xf32>
}

// CHECK-LABEL: func.func @main(%x: tensor<2x4xf32>) -> tensor<2x4xf32> {
// CHECK-NEXT:    %0 = gml.segment "cpu0"(%x) : (tensor<2x4xf32>) -> tensor<2x4xf32> {
// CHECK-NEXT:    ^bb0(%x_1: tensor<2x4xf32>):
// CHECK-NEXT:      %w = gml.param "w" : tensor<4x4xf32>
// CHECK-NEXT:      %wt = gml.permute %w [1, 0] : tensor<4x4xf32> to tensor<4x4xf32>
// CHECK-NEXT:      %1 = gml.matmul %x_1, %wt : (tensor<2x4xf32>, tensor<4x4xf32>) -> tensor<2x4xf32>
// CHECK-NEXT:      gml.yield %1 : tensor<2x4xf32>
// CHECK-NEXT:    }
// CHECK-NEXT:    %1 = gml.segment "gpu0"(%0) : (tensor<2x4xf32>) -> tensor<2x4xf32> {
// CHECK-NEXT:    ^bb0(%2: tensor<2x4xf32>):
// CHECK-NEXT:      %w = gml.param "w" : tensor<4x4xf32>
// CHECK-NEXT:      %wt = gml.permute %w [1, 0] : tensor<4x4xf32> to tensor<4x4xf32>
// CHECK-NEXT:      %3 = gml.matmul %2, %wt : (tensor<2x4xf32>, tensor<4x4xf32>) -> tensor<2x4xf32>
// CHECK-NEXT:      gml.yield %3 : tensor<2x4xf32>
// CHECK-NEXT:    }
// CHECK-NEXT:    func.return %1 : tensor<2x4xf32>
// CHECK-NEXT:  }
