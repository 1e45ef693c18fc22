// RUN: gimletc opt %s --pass-pipeline=outline-segments | filecheck %s

// %2 (cpu0) reads %1, which gpu0 computes after cpu0's first segment: joining
// that segment would make cpu0 and gpu0 wait on each other. It opens a second
// cpu0 segment instead, so every edge runs from an earlier segment to a later
// one (cpu0 -> gpu0 -> cpu0).

func.func @main(%x: tensor<4xf32>) -> tensor<4xf32> {
  %0 = gml.neg %x {gml.device = "cpu0"} : tensor<4xf32>
  %1 = gml.relu %0 {gml.device = "gpu0"} : tensor<4xf32>
  %2 = gml.exp %1 {gml.device = "cpu0"} : tensor<4xf32>
  func.return %2 : tensor<4xf32>
}

// CHECK-LABEL: func.func @main(%x: tensor<4xf32>) -> tensor<4xf32> {
// CHECK-NEXT:    %0 = gml.segment "cpu0"(%x) : (tensor<4xf32>) -> tensor<4xf32> {
// CHECK-NEXT:    ^bb0(%x_1: tensor<4xf32>):
// CHECK-NEXT:      %1 = gml.neg %x_1 : tensor<4xf32>
// CHECK-NEXT:      gml.yield %1 : tensor<4xf32>
// CHECK-NEXT:    }
// CHECK-NEXT:    %1 = gml.segment "gpu0"(%0) : (tensor<4xf32>) -> tensor<4xf32> {
// CHECK-NEXT:    ^bb0(%2: tensor<4xf32>):
// CHECK-NEXT:      %3 = gml.relu %2 : tensor<4xf32>
// CHECK-NEXT:      gml.yield %3 : tensor<4xf32>
// CHECK-NEXT:    }
// CHECK-NEXT:    %2 = gml.segment "cpu0"(%1) : (tensor<4xf32>) -> tensor<4xf32> {
// CHECK-NEXT:    ^bb0(%3: tensor<4xf32>):
// CHECK-NEXT:      %4 = gml.exp %3 : tensor<4xf32>
// CHECK-NEXT:      gml.yield %4 : tensor<4xf32>
// CHECK-NEXT:    }
// CHECK-NEXT:    func.return %2 : tensor<4xf32>
