// RUN: gimletc opt %s --pass-pipeline=canonicalize --no-locations | filecheck %s

// Ops whose results are unused are removed, transitively, including unused
// parameters, index arithmetic and whole gml.fusion ops.

func.func @main(%x: tensor<?x4xf32>) -> tensor<?x4xf32> {
  %w = gml.param "unused.weight" : tensor<4x4xf32>
  %0 = gml.matmul %x, %w : (tensor<?x4xf32>, tensor<4x4xf32>) -> tensor<?x4xf32>
  %1 = gml.exp %0 : tensor<?x4xf32>
  %n = gml.dim %x[0] : tensor<?x4xf32>
  %c2 = arith.constant 2 : index
  %m = arith.muli %n, %c2 : index
  %f = gml.fusion : tensor<?x4xf32> {
    %2 = gml.neg %x : tensor<?x4xf32>
    gml.yield %2 : tensor<?x4xf32>
  }
  %3 = gml.relu %x : tensor<?x4xf32>
  func.return %3 : tensor<?x4xf32>
}

// CHECK-LABEL: func.func @main
// CHECK-NEXT:    %0 = gml.relu %x : tensor<?x4xf32>
// CHECK-NEXT:    func.return %0 : tensor<?x4xf32>
// CHECK-NEXT:  }
