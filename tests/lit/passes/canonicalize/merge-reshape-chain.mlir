// RUN: gimletc opt %s --pass-pipeline=canonicalize --no-locations | filecheck %s

// reshape(reshape(x)) becomes one reshape of x to the outer result type. The
// outer reshape's dims(...) operands carry over. An inner reshape with another
// user is kept for that user.

func.func @main(%x: tensor<2x3x4xf32>, %d: tensor<?x4xf32>) -> (tensor<24xf32>, tensor<?x2x2xf32>, tensor<4x6xf32>, tensor<6x4xf32>) {
  %0 = gml.reshape %x : tensor<2x3x4xf32> to tensor<6x4xf32>
  %1 = gml.reshape %0 : tensor<6x4xf32> to tensor<24xf32>
  %n = gml.dim %d[0] : tensor<?x4xf32>
  %c4 = arith.constant 4 : index
  %m = arith.muli %n, %c4 : index
  %2 = gml.reshape %d dims(%m) : tensor<?x4xf32> to tensor<?xf32>
  %3 = gml.reshape %2 dims(%n) : tensor<?xf32> to tensor<?x2x2xf32>
  %4 = gml.reshape %0 : tensor<6x4xf32> to tensor<4x6xf32>
  func.return %1, %3, %4, %0 : tensor<24xf32>, tensor<?x2x2xf32>, tensor<4x6xf32>, tensor<6x4xf32>
}

// CHECK-LABEL: func.func @main
// CHECK-NEXT:    %0 = gml.reshape %x : tensor<2x3x4xf32> to tensor<6x4xf32>
// CHECK-NEXT:    %1 = gml.reshape %x : tensor<2x3x4xf32> to tensor<24xf32>
// CHECK-NEXT:    %n = gml.dim %d[0] : tensor<?x4xf32>
// CHECK-NEXT:    %2 = gml.reshape %d dims(%n) : tensor<?x4xf32> to tensor<?x2x2xf32>
// CHECK-NEXT:    %3 = gml.reshape %x : tensor<2x3x4xf32> to tensor<4x6xf32>
// CHECK-NEXT:    func.return %1, %2, %3, %0 : tensor<24xf32>, tensor<?x2x2xf32>, tensor<4x6xf32>, tensor<6x4xf32>
// CHECK-NEXT:  }
