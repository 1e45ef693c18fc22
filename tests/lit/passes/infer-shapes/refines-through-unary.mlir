// RUN: gimletc opt %s --pass-pipeline=infer-shapes | filecheck %s

// A refined operand flows through unary ops (which take their result type
// from the operand) to the function's return type.

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
