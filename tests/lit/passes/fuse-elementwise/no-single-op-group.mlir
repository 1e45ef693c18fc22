// RUN: gimletc opt %s --pass-pipeline=fuse-elementwise | filecheck %s

// A lone elementwise op is left as it is: a gml.fusion always holds at least
// two ops.

func.func @main(%x: tensor<2x4xf32>, %w: tensor<4x4xf32>) -> tensor<2x4xf32> {
  %0 = gml.relu %x : tensor<2x4xf32>
  %1 = gml.matmul %0, %w : (tensor<2x4xf32>, tensor<4x4xf32>) -> tensor<2x4xf32>
  %2 = gml.exp %1 : tensor<2x4xf32>
  func.return %2 : tensor<2x4xf32>
}

// CHECK-LABEL: func.func @main
// CHECK-NEXT:    %0 = gml.relu %x : tensor<2x4xf32>
// CHECK-NEXT:    %1 = gml.matmul %0, %w : (tensor<2x4xf32>, tensor<4x4xf32>) -> tensor<2x4xf32>
// CHECK-NEXT:    %2 = gml.exp %1 : tensor<2x4xf32>
// CHECK-NEXT:    func.return %2 : tensor<2x4xf32>
// CHECK-NEXT:  }
// CHECK-NOT:   gml.fusion
