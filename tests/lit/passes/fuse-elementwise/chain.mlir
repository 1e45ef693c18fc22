// RUN: gimletc opt %s --pass-pipeline=fuse-elementwise | filecheck %s

// A producer->consumer chain of elementwise ops (unary, binary with
// broadcasting, where, cast) becomes one gml.fusion standing where the last
// op stood, with that op's location; values from outside are used directly.

func.func @main(%x: tensor<2x4xf32>, %y: tensor<4xf32>, %c: tensor<2x4xi1>) -> tensor<2x4xf16> {
  %0 = gml.add %x, %y : (tensor<2x4xf32>, tensor<4xf32>) -> tensor<2x4xf32> loc("model.py":1:0)
  %1 = gml.relu %0 : tensor<2x4xf32> loc("model.py":2:0)
  %2 = gml.where %c, %1, %y : (tensor<2x4xi1>, tensor<2x4xf32>, tensor<4xf32>) -> tensor<2x4xf32> loc("model.py":3:0)
  %3 = gml.cast %2 : tensor<2x4xf32> to tensor<2x4xf16> loc("layers.0"("model.py":4:0))
  func.return %3 : tensor<2x4xf16>
}

// CHECK-LABEL: func.func @main
// CHECK-NEXT:    %0 = gml.fusion : tensor<2x4xf16> {
// CHECK-NEXT:      %1 = gml.add %x, %y : (tensor<2x4xf32>, tensor<4xf32>) -> tensor<2x4xf32> loc("model.py":1:0)
// CHECK-NEXT:      %2 = gml.relu %1 : tensor<2x4xf32> loc("model.py":2:0)
// CHECK-NEXT:      %3 = gml.where %c, %2, %y : (tensor<2x4xi1>, tensor<2x4xf32>, tensor<4xf32>) -> tensor<2x4xf32> loc("model.py":3:0)
// CHECK-NEXT:      %4 = gml.cast %3 : tensor<2x4xf32> to tensor<2x4xf16> loc("layers.0"("model.py":4:0))
// CHECK-NEXT:      gml.yield %4 : tensor<2x4xf16>
// CHECK-NEXT:    } loc("layers.0"("model.py":4:0))
// CHECK-NEXT:    func.return %0 : tensor<2x4xf16>
// CHECK-NEXT:  }
