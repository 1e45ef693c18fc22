// RUN: gimletc opt %s --pass-pipeline=fuse-elementwise | filecheck %s

// Non-elementwise ops (matmul, softmax, reductions, shape ops) are never fused
// and split a chain: the ops on either side form separate groups.

func.func @main(%x: tensor<2x4xf32>, %w: tensor<4x4xf32>) -> tensor<2x4xf32> {
  %0 = gml.neg %x : tensor<2x4xf32>
  %1 = gml.exp %0 : tensor<2x4xf32>
  %2 = gml.matmul %1, %w : (tensor<2x4xf32>, tensor<4x4xf32>) -> tensor<2x4xf32>
  %3 = gml.tanh %2 : tensor<2x4xf32>
  %4 = gml.sigmoid %3 : tensor<2x4xf32>
  %5 = gml.softmax %4 dim 1 : tensor<2x4xf32>
  %6 = gml.sqrt %5 : tensor<2x4xf32>
  func.return %6 : tensor<2x4xf32>
}

// CHECK-LABEL: func.func @main
// CHECK-NEXT:    %0 = gml.fusion : tensor<2x4xf32> {
// CHECK-NEXT:      %1 = gml.neg %x : tensor<2x4xf32>
// CHECK-NEXT:      %2 = gml.exp %1 : tensor<2x4xf32>
// CHECK-NEXT:      gml.yield %2 : tensor<2x4xf32>
// CHECK-NEXT:    }
// CHECK-NEXT:    %3 = gml.matmul %0, %w : (tensor<2x4xf32>, tensor<4x4xf32>) -> tensor<2x4xf32>
// CHECK-NEXT:    %4 = gml.fusion : tensor<2x4xf32> {
// CHECK-NEXT:      %5 = gml.tanh %3 : tensor<2x4xf32>
// CHECK-NEXT:      %6 = gml.sigmoid %5 : tensor<2x4xf32>
// CHECK-NEXT:      gml.yield %6 : tensor<2x4xf32>
// CHECK-NEXT:    }
// CHECK-NEXT:    %7 = gml.softmax %4 dim 1 : tensor<2x4xf32>
// CHECK-NEXT:    %8 = gml.sqrt %7 : tensor<2x4xf32>
// CHECK-NEXT:    func.return %8 : tensor<2x4xf32>
// CHECK-NEXT:  }
