// RUN: gimletc opt %s --pass-pipeline=infer-shapes | filecheck %s

// When a returned value is refined, the function's result type follows; the
// argument types are left as they were.

func.func @main(%x: tensor<?x4xf32>, %y: tensor<3x1xf32>) -> (tensor<?x4xf32>, tensor<?x?xf32>) {
  %0 = gml.mul %x, %y : (tensor<?x4xf32>, tensor<3x1xf32>) -> tensor<?x?xf32>
  func.return %x, %0 : tensor<?x4xf32>, tensor<?x?xf32>
}

// CHECK-LABEL: func.func @main(%x: tensor<?x4xf32>, %y: tensor<3x1xf32>) -> (tensor<?x4xf32>, tensor<3x4xf32>) {
// CHECK-NEXT:    %0 = gml.mul %x, %y : (tensor<?x4xf32>, tensor<3x1xf32>) -> tensor<3x4xf32>
// CHECK-NEXT:    func.return %x, %0 : tensor<?x4xf32>, tensor<3x4xf32>
// CHECK-NEXT:  }
