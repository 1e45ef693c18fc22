// RUN: gimletc opt %s --pass-pipeline=canonicalize --no-locations | filecheck %s

// A reshape, expand, cast or full-range slice whose result type equals its operand type is
// replaced by the operand. With a `?` in the type the op is kept: the dims(...)
// operands may say otherwise at run time.

func.func @main(%x: tensor<2x3xf32>, %d: tensor<?x3xf32>) -> (tensor<2x3xf32>, tensor<?x3xf32>, tensor<6xf32>) {
  %0 = gml.reshape %x : tensor<2x3xf32> to tensor<2x3xf32>
  %1 = gml.expand %0 : tensor<2x3xf32> to tensor<2x3xf32>
  %2 = gml.cast %1 : tensor<2x3xf32> to tensor<2x3xf32>
  %3 = gml.slice %2 dim 1 start 0 end 3 step 1 : tensor<2x3xf32> to tensor<2x3xf32>
  %n = gml.dim %d[0] : tensor<?x3xf32>
  %4 = gml.reshape %d dims(%n) : tensor<?x3xf32> to tensor<?x3xf32>
  %5 = gml.reshape %3 : tensor<2x3xf32> to tensor<6xf32>
  func.return %3, %4, %5 : tensor<2x3xf32>, tensor<?x3xf32>, tensor<6xf32>
}

// CHECK-LABEL: func.func @main
// CHECK-NEXT:    %n = gml.dim %d[0] : tensor<?x3xf32>
// CHECK-NEXT:    %0 = gml.reshape %d dims(%n) : tensor<?x3xf32> to tensor<?x3xf32>
// CHECK-NEXT:    %1 = gml.reshape %x : tensor<2x3xf32> to tensor<6xf32>
// CHECK-NEXT:    func.return %x, %0, %1 : tensor<2x3xf32>, tensor<?x3xf32>, tensor<6xf32>
// CHECK-NEXT:  }
