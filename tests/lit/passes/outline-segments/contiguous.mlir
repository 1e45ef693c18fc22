// RUN: gimletc opt %s --pass-pipeline=outline-segments | filecheck %s

// Consecutive ops of one device become one gml.segment, in program order. A
// segment is isolated from above: what it reads from outside (a function
// argument, another segment's result) enters as an operand and a block
// argument; what is read outside it leaves through gml.yield. The gml.device
// attributes are consumed.

func.func @main(%x: tensor<4xf32>) -> tensor<4xf32> {
  %0 = gml.neg %x {gml.device = "cpu0"} : tensor<4xf32>
  %1 = gml.exp %0 {gml.device = "cpu0"} : tensor<4xf32>
  %2 = gml.relu %1 {gml.device = "gpu0"} : tensor<4xf32>
  %3 = gml.sqrt %2 {gml.device = "gpu0"} : tensor<4xf32>
  func.return %3 : tensor<4xf32>
}

// CHECK-LABEL: func.func @main(%x: tensor<4xf32>) -> tensor<4xf32> {
// CHECK-NEXT:    %0 = gml.segment "cpu0"(%x) : (tensor<4xf32>) -> tensor<4xf32> {
// CHECK-NEXT:    ^bb0(%x_1: tensor<4xf32>):
// CHECK-NEXT:      %1 = gml.neg %x_1 : tensor<4xf32>
// CHECK-NEXT:      %2 = gml.exp %1 : tensor<4xf32>
// CHECK-NEXT:      gml.yield %2 : tensor<4xf32>
// CHECK-NEXT:    }
// CHECK-NEXT:    %1 = gml.segment "gpu0"(%0) : (tensor<4xf32>) -> tensor<4xf32> {
// CHECK-NEXT:    ^bb0(%2: tensor<4xf32>):
// CHECK-NEXT:      %3 = gml.relu %2 : tensor<4xf32>
// CHECK-NEXT:      %4 = gml.sqrt %3 : tensor<4xf32>
// CHECK-NEXT:      gml.yield %4 : tensor<4xf32>
// CHECK-NEXT:    }
// CHECK-NEXT:    func.return %1 : tensor<4xf32>
// CHECK-NEXT:  }
// CHECK-NOT:   gml.device
