// RUN: gimletc opt %s --pass-pipeline=fuse-elementwise | filecheck %s

// A group is one loop over the broadcast of its members' shapes, so an op whose
// result does not broadcast with the group's (q with 4 heads, k with 2: grouped-query
// attention's rotary embedding) starts a group of its own, though both read %c.

func.func @main(%q: tensor<4x8xf32>, %k: tensor<2x8xf32>, %c: tensor<8xf32>) -> (tensor<4x8xf32>, tensor<2x8xf32>) {
  %0 = gml.neg %c : tensor<8xf32>
  %1 = gml.mul %q, %0 : (tensor<4x8xf32>, tensor<8xf32>) -> tensor<4x8xf32>
  %2 = gml.mul %k, %0 : (tensor<2x8xf32>, tensor<8xf32>) -> tensor<2x8xf32>
  %3 = gml.exp %2 : tensor<2x8xf32>
  func.return %1, %3 : tensor<4x8xf32>, tensor<2x8xf32>
}

// CHECK-LABEL: func.func @main
// CHECK-NEXT:    %0, %1 = gml.fusion : tensor<8xf32>, tensor<4x8xf32> {
// CHECK-NEXT:      %2 = gml.neg %c : tensor<8xf32>
// CHECK-NEXT:      %3 = gml.mul %q, %2 : (tensor<4x8xf32>, tensor<8xf32>) -> tensor<4x8xf32>
// CHECK-NEXT:      gml.yield %2, %3 : tensor<8xf32>, tensor<4x8xf32>
// CHECK-NEXT:    }
// CHECK-NEXT:    %4 = gml.fusion : tensor<2x8xf32> {
// CHECK-NEXT:      %5 = gml.mul %k, %0 : (tensor<2x8xf32>, tensor<8xf32>) -> tensor<2x8xf32>
// CHECK-NEXT:      %6 = gml.exp %5 : tensor<2x8xf32>
// CHECK-NEXT:      gml.yield %6 : tensor<2x8xf32>
// CHECK-NEXT:    }
// CHECK-NEXT:    func.return %1, %4 : tensor<4x8xf32>, tensor<2x8xf32>
// CHECK-NEXT:  }
