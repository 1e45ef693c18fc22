// RUN: gimletc opt %s --pass-pipeline=cse | filecheck %s

// Ops with the same name, operands (in order), properties and result types are
// merged into the first one, which keeps its own location. A property left at
// its default equals the same value written out (gelu approximate "none").
// Operand order matters (no commutativity), and params with different names
// are different values.

func.func @main(%x: tensor<4xf32>, %y: tensor<4xf32>) -> (tensor<4xf32>, tensor<4xf32>, tensor<4xf32>) {
  %0 = gml.add %x, %y : (tensor<4xf32>, tensor<4xf32>) -> tensor<4xf32> loc("model.py":1:0)
  %1 = gml.add %x, %y : (tensor<4xf32>, tensor<4xf32>) -> tensor<4xf32> loc("model.py":2:0)
  %2 = gml.add %y, %x : (tensor<4xf32>, tensor<4xf32>) -> tensor<4xf32>
  %3 = gml.mul %0, %1 : (tensor<4xf32>, tensor<4xf32>) -> tensor<4xf32>
  %4 = gml.mul %3, %2 : (tensor<4xf32>, tensor<4xf32>) -> tensor<4xf32>
  %5 = gml.gelu %x : tensor<4xf32>
  %6 = gml.gelu %x approximate "none" : tensor<4xf32>
  %7 = gml.gelu %x approximate "tanh" : tensor<4xf32>
  %8 = gml.add %5, %6 : (tensor<4xf32>, tensor<4xf32>) -> tensor<4xf32>
  %9 = gml.add %8, %7 : (tensor<4xf32>, tensor<4xf32>) -> tensor<4xf32>
  %p = gml.param "w" : tensor<4xf32>
  %q = gml.param "w" : tensor<4xf32>
  %r = gml.param "v" : tensor<4xf32>
  %10 = gml.add %p, %q : (tensor<4xf32>, tensor<4xf32>) -> tensor<4xf32>
  %11 = gml.add %10, %r : (tensor<4xf32>, tensor<4xf32>) -> tensor<4xf32>
  func.return %4, %9, %11 : tensor<4xf32>, tensor<4xf32>, tensor<4xf32>
}

// CHECK-LABEL: func.func @main
// CHECK-NEXT:    %0 = gml.add %x, %y : (tensor<4xf32>, tensor<4xf32>) -> tensor<4xf32> loc("model.py":1:0)
// CHECK-NEXT:    %1 = gml.add %y, %x : (tensor<4xf32>, tensor<4xf32>) -> tensor<4xf32>
// CHECK-NEXT:    %2 = gml.mul %0, %0 : (tensor<4xf32>, tensor<4xf32>) -> tensor<4xf32>
// CHECK-NEXT:    %3 = gml.mul %2, %1 : (tensor<4xf32>, tensor<4xf32>) -> tensor<4xf32>
// CHECK-NEXT:    %4 = gml.gelu %x : tensor<4xf32>
// CHECK-NEXT:    %5 = gml.gelu %x approximate "tanh" : tensor<4xf32>
// CHECK-NEXT:    %6 = gml.add %4, %4 : (tensor<4xf32>, tensor<4xf32>) -> tensor<4xf32>
// CHECK-NEXT:    %7 = gml.add %6, %5 : (tensor<4xf32>, tensor<4xf32>) -> tensor<4xf32>
// CHECK-NEXT:    %p = gml.param "w" : tensor<4xf32>
// CHECK-NEXT:    %r = gml.param "v" : tensor<4xf32>
// CHECK-NEXT:    %8 = gml.add %p, %p : (tensor<4xf32>, tensor<4xf32>) -> tensor<4xf32>
// CHECK-NEXT:    %9 = gml.add %8, %r : (tensor<4xf32>, tensor<4xf32>) -> tensor<4xf32>
// CHECK-NEXT:    func.return %3, %7, %9 : tensor<4xf32>, tensor<4xf32>, tensor<4xf32>
// CHECK-NEXT:  }
