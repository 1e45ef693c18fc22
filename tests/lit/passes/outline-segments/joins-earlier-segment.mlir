// RUN: gimletc opt %s --pass-pipeline=outline-segments | filecheck %s

// %2 (cpu0) comes after the gpu0 op %1 in program order but does not depend
// on it: everything it reads is available by the end of cpu0's first segment,
// so it joins that segment instead of opening a new one. Two segments, not
// three; the gpu0 segment then reads both cpu0 results.

func.func @main(%x: tensor<4xf32>) -> tensor<4xf32> {
  %0 = gml.neg %x {gml.device = "cpu0"} : tensor<4xf32>
  %1 = gml.relu %x {gml.device = "gpu0"} : tensor<4xf32>
  %2 = gml.exp %0 {gml.device = "cpu0"} : tensor<4xf32>
  %3 = gml.add %1, %2 {gml.device = "gpu0"} : (tensor<4xf32>, tensor<4xf32>) -> tensor<4xf32>
  func.return %3 : tensor<4xf32>
}

// CHECK-LABEL: func.func @main(%x: tensor<4xf32>) -> tensor<4xf32> {
// CHECK-NEXT:    %0 = gml.segment "cpu0"(%x) : (tensor<4xf32>) -> tensor<4xf32> {
// CHECK-NEXT:    ^bb0(%x_1: tensor<4xf32>):
// CHECK-NEXT:      %1 = gml.neg %x_1 : tensor<4xf32>
// CHECK-NEXT:      %2 = gml.exp %1 : tensor<4xf32>
// CHECK-NEXT:      gml.yield %2 : tensor<4xf32>
// CHECK-NEXT:    }
// CHECK-NEXT:    %1 = gml.segment "gpu0"(%x, %0) : (tensor<4xf32>, tensor<4xf32>) -> tensor<4xf32> {
// CHECK-NEXT:    ^bb0(%x_1: tensor<4xf32>, %2: tensor<4xf32>):
// CHECK-NEXT:      %3 = gml.relu %x_1 : tensor<4xf32>
// CHECK-NEXT:      %4 = gml.add %3, %2 : (tensor<4xf32>, tensor<4xf32>) -> tensor<4xf32>
// CHECK-NEXT:      gml.yield %4 : tensor<4xf32>
// CHECK-NEXT:    }
// CHECK-NEXT:    func.return %1 : tensor<4xf32>
