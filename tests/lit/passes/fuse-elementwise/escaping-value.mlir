// RUN: gimletc opt %s --pass-pipeline=fuse-elementwise | filecheck %s

// Every value of the group that is also used outside it (here by func.return
// and by the expand) becomes a result of the gml.fusion, in member order, and
// the outside users are rewired to those results.

func.func @main(%x: tensor<4xf32>, %w: tensor<4x4xf32>) -> (tensor<4xf32>, tensor<4xf32>, tensor<4x4xf32>) {
  %0 = gml.exp %x : tensor<4xf32>
  %1 = gml.neg %0 : tensor<4xf32>
  %2 = gml.sub %0, %1 : (tensor<4xf32>, tensor<4xf32>) -> tensor<4xf32>
  %3 = gml.expand %1 : tensor<4xf32> to tensor<4x4xf32>
  %4 = gml.matmul %3, %w : (tensor<4x4xf32>, tensor<4x4xf32>) -> tensor<4x4xf32>
  func.return %0, %2, %4 : tensor<4xf32>, tensor<4xf32>, tensor<4x4xf32>
}

// CHECK-LABEL: func.func @main
// CHECK-NEXT:    %0, %1, %2 = gml.fusion : tensor<4xf32>, tensor<4xf32>, tensor<4xf32> {
// CHECK-NEXT:      %3 = gml.exp %x : tensor<4xf32>
// CHECK-NEXT:      %4 = gml.neg %3 : tensor<4xf32>
// CHECK-NEXT:      %5 = gml.sub %3, %4 : (tensor<4xf32>, tensor<4xf32>) -> tensor<4xf32>
// CHECK-NEXT:      gml.yield %3, %4, %5 : tensor<4xf32>, tensor<4xf32>, tensor<4xf32>
// CHECK-NEXT:    }
// CHECK-NEXT:    %6 = gml.expand %1 : tensor<4xf32> to tensor<4x4xf32>
// CHECK-NEXT:    %7 = gml.matmul %6, %w : (tensor<4x4xf32>, tensor<4x4xf32>) -> tensor<4x4xf32>
// CHECK-NEXT:    func.return %0, %2, %7 : tensor<4xf32>, tensor<4xf32>, tensor<4x4xf32>
// CHECK-NEXT:  }
