// RUN: gimletc opt %s --pass-pipeline=canonicalize --no-locations | filecheck %s

// permute(permute(x, a), b) becomes permute(x, [a[b[0]], a[b[1]], ...]); two
// permutes that cancel compose to the identity, which is then removed.

func.func @main(%x: tensor<2x3x4xf32>) -> (tensor<4x2x3xf32>, tensor<2x3x4xf32>) {
  %0 = gml.permute %x [1, 0, 2] : tensor<2x3x4xf32> to tensor<3x2x4xf32>
  %1 = gml.permute %0 [2, 1, 0] : tensor<3x2x4xf32> to tensor<4x2x3xf32>
  %2 = gml.permute %x [0, 2, 1] : tensor<2x3x4xf32> to tensor<2x4x3xf32>
  %3 = gml.permute %2 [0, 2, 1] : tensor<2x4x3xf32> to tensor<2x3x4xf32>
  func.return %1, %3 : tensor<4x2x3xf32>, tensor<2x3x4xf32>
}

// CHECK-LABEL: func.func @main
// CHECK-NEXT:    %0 = gml.permute %x [2, 0, 1] : tensor<2x3x4xf32> to tensor<4x2x3xf32>
// CHECK-NEXT:    func.return %0, %x : tensor<4x2x3xf32>, tensor<2x3x4xf32>
// CHECK-NEXT:  }
