// RUN: gimletc opt %s --pass-pipeline=infer-shapes | filecheck %s

// A `?` that the operands pin down is replaced by the inferred size, and the
// refined type flows on to the users of the value, op by op.

func.func @main(%x: tensor<2x4xf32>, %w: tensor<4x8xf32>, %b: tensor<8xf32>) -> tensor<?x?xf32> {
  %0 = gml.matmul %x, %w : (tensor<2x4xf32>, tensor<4x8xf32>) -> tensor<?x?xf32>
  %1 = gml.add %0, %b : (tensor<?x?xf32>, tensor<8xf32>) -> tensor<?x8xf32>
  %2 = gml.softmax %1 dim -1 : tensor<?x8xf32>
  %3 = gml.sum %2 [1] keepdim true : tensor<?x8xf32> to tensor<?x?xf32>
  func.return %3 : tensor<?x?xf32>
}

// CHECK-LABEL: func.func @main
// CHECK-NEXT:    %0 = gml.matmul %x, %w : (tensor<2x4xf32>, tensor<4x8xf32>) -> tensor<2x8xf32>
// CHECK-NEXT:    %1 = gml.add %0, %b : (tensor<2x8xf32>, tensor<8xf32>) -> tensor<2x8xf32>
// CHECK-NEXT:    %2 = gml.softmax %1 dim -1 : tensor<2x8xf32>
// CHECK-NEXT:    %3 = gml.sum %2 [1] keepdim true : tensor<2x8xf32> to tensor<2x1xf32>
// CHECK-NEXT:    func.return %3 : tensor<2x1xf32>
// CHECK-NEXT:  }
