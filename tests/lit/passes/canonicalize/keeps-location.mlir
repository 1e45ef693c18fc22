// RUN: gimletc opt %s --pass-pipeline=canonicalize | filecheck %s

// An op built by a rewrite takes the location of the op it replaces, so a
// folded constant or a merged reshape/permute still points at the user's line.

func.func @main(%x: tensor<2x3x4xf32>) -> (tensor<3xf32>, tensor<24xf32>, tensor<4x3x2xf32>) {
  %a = gml.constant dense<[1.0, 2.0, 3.0]> : tensor<3xf32> loc("model.py":1:0)
  %0 = gml.neg %a : tensor<3xf32> loc("layers.0"("model.py":2:0))
  %1 = gml.reshape %x : tensor<2x3x4xf32> to tensor<6x4xf32> loc("model.py":3:0)
  %2 = gml.reshape %1 : tensor<6x4xf32> to tensor<24xf32> loc("layers.1"("model.py":4:0))
  %3 = gml.permute %x [1, 0, 2] : tensor<2x3x4xf32> to tensor<3x2x4xf32> loc("model.py":5:0)
  %4 = gml.permute %3 [2, 0, 1] : tensor<3x2x4xf32> to tensor<4x3x2xf32> loc("model.py":6:0)
  func.return %0, %2, %4 : tensor<3xf32>, tensor<24xf32>, tensor<4x3x2xf32>
}

// CHECK-LABEL: func.func @main
// CHECK-NEXT:    %0 = gml.constant dense<[-1.000000e+00, -2.000000e+00, -3.000000e+00]> : tensor<3xf32> loc("layers.0"("model.py":2:0))
// CHECK-NEXT:    %1 = gml.reshape %x : tensor<2x3x4xf32> to tensor<24xf32> loc("layers.1"("model.py":4:0))
// CHECK-NEXT:    %2 = gml.permute %x [2, 1, 0] : tensor<2x3x4xf32> to tensor<4x3x2xf32> loc("model.py":6:0)
// CHECK-NEXT:    func.return %0, %1, %2 : tensor<3xf32>, tensor<24xf32>, tensor<4x3x2xf32>
// CHECK-NEXT:  }
