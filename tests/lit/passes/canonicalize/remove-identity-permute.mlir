// RUN: gimletc opt %s --pass-pipeline=canonicalize --no-locations | filecheck %s

// A permute by the identity permutation is replaced by its operand; any other
// permutation, even of equal-sized dims, is kept.

func.func @main(%x: tensor<4x4x2xf32>) -> (tensor<4x4x2xf32>, tensor<4x4x2xf32>) {
  %0 = gml.permute %x [0, 1, 2] : tensor<4x4x2xf32> to tensor<4x4x2xf32>
  %1 = gml.permute %x [1, 0, 2] : tensor<4x4x2xf32> to tensor<4x4x2xf32>
  func.return %0, %1 : tensor<4x4x2xf32>, tensor<4x4x2xf32>
}

// CHECK-LABEL: func.func @main
// CHECK-NEXT:    %0 = gml.permute %x [1, 0, 2] : tensor<4x4x2xf32> to tensor<4x4x2xf32>
// CHECK-NEXT:    func.return %x, %0 : tensor<4x4x2xf32>, tensor<4x4x2xf32>
// CHECK-NEXT:  }
