// RUN: rm -rf %t && gimletc opt %s --pass-pipeline=canonicalize,cse --dump-dir %t > /dev/null
// RUN: ls %t | filecheck %s
// RUN: filecheck %s --check-prefix=INPUT < %t/00-input.mlir
// RUN: filecheck %s --check-prefix=CANON < %t/01-canonicalize.mlir

// --dump-dir DIR writes the input and the IR after each pass as
// NN-<pass>.mlir, numbered in pipeline order, with locations.

func.func @main(%x: tensor<2x3xf32>) -> tensor<2x3xf32> {
  %0 = gml.permute %x [0, 1] : tensor<2x3xf32> to tensor<2x3xf32> loc("model.py":1:0)
  %1 = gml.exp %0 : tensor<2x3xf32> loc("model.py":2:0)
  func.return %1 : tensor<2x3xf32>
}

// CHECK:      00-input.mlir
// CHECK-NEXT: 01-canonicalize.mlir
// CHECK-NEXT: 02-cse.mlir
// CHECK-NOT:  .mlir

// INPUT:      %0 = gml.permute %x [0, 1] : tensor<2x3xf32> to tensor<2x3xf32> loc("model.py":1:0)
// INPUT-NEXT: %1 = gml.exp %0 : tensor<2x3xf32> loc("model.py":2:0)

// CANON:      func.func @main(%x: tensor<2x3xf32>) -> tensor<2x3xf32> {
// CANON-NEXT:   %0 = gml.exp %x : tensor<2x3xf32> loc("model.py":2:0)
// CANON-NEXT:   func.return %0 : tensor<2x3xf32>
