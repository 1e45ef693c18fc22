// RUN: gimletc opt %s --pass-pipeline=infer-shapes | filecheck %s

// KNOWN BUG: unary ops (UnaryOp in dialects/gml.py) have no infer(), so when
// their operand is refined their result keeps the old `?` type and the
// verifier rejects the module after the pass:
//   gml.relu: attribute tensor<2x8xf32> expected from variable 'T', but got
//   tensor<?x?xf32> after pass 'infer-shapes'

func.func @main(%x: tensor<2x4xf32>, %w: tensor<4x8xf32>) -> tensor<?x?xf32> {
  %0 = gml.matmul %x, %w : (tensor<2x4xf32>, tensor<4x8xf32>) -> tensor<?x?xf32>
  %1 = gml.relu %0 : tensor<?x?xf32>
  func.return %1 : tensor<?x?xf32>
}

// CHECK-LABEL: func.func @main(%x: tensor<2x4xf32>, %w: tensor<4x8xf32>) -> tensor<2x8xf32> {
// CHECK-NEXT:    %0 = gml.matmul %x, %w : (tensor<2x4xf32>, tensor<4x8xf32>) -> tensor<2x8xf32>
// CHECK-NEXT:    %1 = gml.relu %0 : tensor<2x8xf32>
// CHECK-NEXT:    func.return %1 : tensor<2x8xf32>
// CHECK-NEXT:  }
