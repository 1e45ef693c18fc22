// RUN: gimletc opt %s --pass-pipeline=fuse-elementwise | filecheck %s
// RUN: gimletc opt %s --pass-pipeline=fuse-elementwise | gimletc opt - > /dev/null

// A gml.fusion stands where its last member stood, so a group is not extended
// past an op outside it that uses one of its values (the matmul below):
// extending it would move %1 after its user. The chain is cut there, and the
// result is still in a valid order (the second RUN line re-parses and
// re-verifies it, dominance included).

func.func @main(%x: tensor<4x4xf32>) -> tensor<4x4xf32> {
  %0 = gml.exp %x : tensor<4x4xf32>
  %1 = gml.neg %0 : tensor<4x4xf32>
  %2 = gml.matmul %1, %x : (tensor<4x4xf32>, tensor<4x4xf32>) -> tensor<4x4xf32>
  %3 = gml.add %1, %2 : (tensor<4x4xf32>, tensor<4x4xf32>) -> tensor<4x4xf32>
  %4 = gml.relu %3 : tensor<4x4xf32>
  func.return %4 : tensor<4x4xf32>
}

// CHECK-LABEL: func.func @main
// CHECK-NEXT:    %0 = gml.fusion : tensor<4x4xf32> {
// CHECK-NEXT:      %1 = gml.exp %x : tensor<4x4xf32>
// CHECK-NEXT:      %2 = gml.neg %1 : tensor<4x4xf32>
// CHECK-NEXT:      gml.yield %2 : tensor<4x4xf32>
// CHECK-NEXT:    }
// CHECK-NEXT:    %3 = gml.matmul %0, %x : (tensor<4x4xf32>, tensor<4x4xf32>) -> tensor<4x4xf32>
// CHECK-NEXT:    %4 = gml.fusion : tensor<4x4xf32> {
// CHECK-NEXT:      %5 = gml.add %0, %3 : (tensor<4x4xf32>, tensor<4x4xf32>) -> tensor<4x4xf32>
// CHECK-NEXT:      %6 = gml.relu %5 : tensor<4x4xf32>
// CHECK-NEXT:      gml.yield %6 : tensor<4x4xf32>
// CHECK-NEXT:    }
// CHECK-NEXT:    func.return %4 : tensor<4x4xf32>
// CHECK-NEXT:  }
