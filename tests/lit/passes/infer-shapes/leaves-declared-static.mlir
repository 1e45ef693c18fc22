// RUN: gimletc opt %s --pass-pipeline=infer-shapes | filecheck %s

// infer-shapes only ever makes a type more static. A declared static size the
// operands cannot confirm stays, a `?` the operands leave open stays, and ops
// whose result shape is data they carry (reshape with dims(...)) are left alone.

func.func @main(%x: tensor<?x4xf32>, %y: tensor<4xf32>) -> (tensor<3x4xf32>, tensor<?x4xf32>, tensor<?x2x2xf32>) {
  %0 = gml.add %x, %y : (tensor<?x4xf32>, tensor<4xf32>) -> tensor<3x4xf32>
  %1 = gml.sub %x, %y : (tensor<?x4xf32>, tensor<4xf32>) -> tensor<?x4xf32>
  %n = gml.dim %x[0] : tensor<?x4xf32>
  %2 = gml.reshape %1 dims(%n) : tensor<?x4xf32> to tensor<?x2x2xf32>
  func.return %0, %1, %2 : tensor<3x4xf32>, tensor<?x4xf32>, tensor<?x2x2xf32>
}

// CHECK-LABEL: func.func @main(%x: tensor<?x4xf32>, %y: tensor<4xf32>) -> (tensor<3x4xf32>, tensor<?x4xf32>, tensor<?x2x2xf32>) {
// CHECK-NEXT:    %0 = gml.add %x, %y : (tensor<?x4xf32>, tensor<4xf32>) -> tensor<3x4xf32>
// CHECK-NEXT:    %1 = gml.sub %x, %y : (tensor<?x4xf32>, tensor<4xf32>) -> tensor<?x4xf32>
// CHECK-NEXT:    %n = gml.dim %x[0] : tensor<?x4xf32>
// CHECK-NEXT:    %2 = gml.reshape %1 dims(%n) : tensor<?x4xf32> to tensor<?x2x2xf32>
// CHECK-NEXT:    func.return %0, %1, %2 : tensor<3x4xf32>, tensor<?x4xf32>, tensor<?x2x2xf32>
// CHECK-NEXT:  }
