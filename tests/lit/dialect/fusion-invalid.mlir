// RUN: not gimletc opt %s 2>&1 | filecheck %s

// Backends emit a gml.fusion as one loop over the broadcast of its members'
// shapes: members whose shapes do not broadcast cannot share one.

func.func @main(%q: tensor<4x8xf32>, %k: tensor<2x8xf32>) -> tensor<2x8xf32> {
  %0, %1 = gml.fusion : tensor<4x8xf32>, tensor<2x8xf32> {
    %2 = gml.neg %q : tensor<4x8xf32>
    %3 = gml.neg %k : tensor<2x8xf32>
    gml.yield %2, %3 : tensor<4x8xf32>, tensor<2x8xf32>
  }
  func.return %1 : tensor<2x8xf32>
}
// CHECK: gimletc: error: gml.fusion: members must broadcast to one domain: gml.neg gives 2x8 in a group over 4x8
